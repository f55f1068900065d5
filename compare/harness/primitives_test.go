package harness

import (
	"io"
	"strings"
	"testing"
	"time"

	"github.com/lockd/lockd/backend"
)

// hidesPrimitives is a real backend whose semaphores and read-write locks
// are out of sight (the embedded interface carries only the lock methods),
// as on a backend that keeps neither.
type hidesPrimitives struct{ backend.Backend }

// saysWhy is hidesPrimitives with the reasons a backend gives in
// /v1/capabilities.
type saysWhy struct{ hidesPrimitives }

func (saysWhy) Unsupported() map[string]string {
	return map[string]string{backend.FeatureSemaphores: "no semaphores here", backend.FeatureRWLocks: "no rwlocks here"}
}

// TestPrimitivePerfRows runs the semaphores and rwlocks rows as -quick does
// on embedded etcd, over HTTP: every cell measured, the head of the line
// served first; and on a backend without the primitives, each row says so
// with what /v1/capabilities says instead of a number.
func TestPrimitivePerfRows(t *testing.T) {
	if testing.Short() {
		t.Skip("runs over embedded etcd; skipped with -short")
	}
	d := etcdDeployment(t)
	cfg := Config{Quick: true, Duration: time.Second}
	etcd := targets()[0]
	b := newBar(io.Discard, "test")

	sem := runSemaphores(t.Context(), etcd, d, cfg, b)
	if sem.Unsupported != "" || sem.Unmeasured != "" {
		t.Fatalf("semaphores on etcd: unsupported %q, unmeasured %q", sem.Unsupported, sem.Unmeasured)
	}
	if !strings.HasPrefix(sem.Direct, "none: ") {
		t.Errorf("etcd's direct semaphore baseline: got %q, want it to say there is none", sem.Direct)
	}
	if permits, _ := semSizes(cfg); len(sem.Throughput) != len(permits) {
		t.Errorf("got %d throughput cells, want %d", len(sem.Throughput), len(permits))
	}
	for _, c := range sem.Throughput {
		if c.Unmeasured != "" || !(c.PerSec > 0) || c.Clients != 2*c.Permits {
			t.Errorf("throughput N=%d: %+v; want a rate with 2N clients", c.Permits, c)
		}
	}
	switch h := sem.Handoff; {
	case h == nil || h.Lat == nil:
		t.Errorf("handoff not measured: %+v", h)
	case h.PassedOver != 0:
		t.Errorf("handoff: the head of the line was passed over %d times in %d handoffs (etcd's semaphores are FIFO)", h.PassedOver, h.Handoffs)
	case int64(h.Lat.N) != h.Handoffs:
		t.Errorf("handoff: %d samples for %d handoffs", h.Lat.N, h.Handoffs)
	}

	rw := runRWLocks(t.Context(), etcd, d, cfg, b)
	if rw.Unsupported != "" || rw.Unmeasured != "" || len(rw.Flood) != len(rwFloodSizes(cfg)) {
		t.Fatalf("rwlocks on etcd: %+v", rw)
	}
	for _, c := range rw.Flood {
		if c.WriterWait == nil || c.Writes == 0 || c.Reads == 0 || !(c.ReadsPerS > 0) {
			t.Errorf("reader flood of %d: %+v; want writer waits and reads", c.Readers, c)
		}
	}

	hidden := *d
	hidden.newBackend = func(addrs []string, rt *rtCounter) (backend.Backend, error) {
		b, err := d.newBackend(addrs, rt)
		return hidesPrimitives{b}, err
	}
	if s := runSemaphores(t.Context(), etcd, &hidden, cfg, b); s.Unsupported == "" || len(s.Throughput) > 0 {
		t.Errorf("semaphores hidden: %+v; want unsupported and no cell", s)
	} else if got := semaphoreStatus(s); !strings.HasPrefix(got, "n/a (not supported: ") {
		t.Errorf("semaphores hidden: status %q", got)
	}
	if r := runRWLocks(t.Context(), etcd, &hidden, cfg, b); r.Unsupported == "" || len(r.Flood) > 0 {
		t.Errorf("rwlocks hidden: %+v; want unsupported and no cell", r)
	}
	hidden.newBackend = func(addrs []string, rt *rtCounter) (backend.Backend, error) {
		b, err := d.newBackend(addrs, rt)
		return saysWhy{hidesPrimitives{b}}, err
	}
	if s := runSemaphores(t.Context(), etcd, &hidden, cfg, b); s.Unsupported != "no semaphores here" {
		t.Errorf("semaphores with a reason: unsupported %q, want the capabilities' reason", s.Unsupported)
	}
	if r := runRWLocks(t.Context(), etcd, &hidden, cfg, b); r.Unsupported != "no rwlocks here" {
		t.Errorf("rwlocks with a reason: unsupported %q, want the capabilities' reason", r.Unsupported)
	}
}
