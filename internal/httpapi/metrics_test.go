package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/lockd/lockd/backend"
	etcdb "github.com/lockd/lockd/backend/etcd"
	"github.com/lockd/lockd/internal/httpapi"
	"github.com/lockd/lockd/internal/testserver"
)

// metricsServer is a real lockd API over the etcd backend on an embedded
// etcd, wired as cmd/lockd wires it (the backend's expiry hook counts into
// the metrics), with its log kept for inspection.
type metricsServer struct {
	url string
	m   *httpapi.Metrics
	log *syncBuffer
}

// syncBuffer is a log sink the handlers and the test may use at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newMetricsServer starts it on a new embedded etcd; wrap, when set, wraps
// the real backend.
func newMetricsServer(t *testing.T, wrap func(backend.Backend) backend.Backend) *metricsServer {
	t.Helper()
	return newReplica(t, testserver.EtcdCluster(t, 1).Endpoints(), wrap)
}

// newReplica starts one over the etcd at endpoints: two calls are two lockd
// replicas over one store.
func newReplica(t *testing.T, endpoints []string, wrap func(backend.Backend) backend.Backend) *metricsServer {
	t.Helper()
	m := httpapi.NewMetrics()
	var b backend.Backend = etcdOn(t, endpoints, etcdb.Options{OpTimeout: 2 * time.Second, Hooks: backend.Hooks{OnExpire: m.Expired}})
	if wrap != nil {
		b = wrap(b)
	}
	log := &syncBuffer{}
	api := httpapi.New(b, httpapi.Options{Backend: "etcd", Metrics: m, Logger: slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	ts := httptest.NewServer(api)
	t.Cleanup(ts.Close)
	return &metricsServer{url: ts.URL, m: m, log: log}
}

// post sends a request with ctx and returns its status (0 when it failed).
func (s *metricsServer) send(ctx context.Context, method, path, body string) int {
	req, err := http.NewRequestWithContext(ctx, method, s.url+path, strings.NewReader(body))
	if err != nil {
		return 0
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// family returns the metric family name from the registry, nil if absent.
func (s *metricsServer) family(t *testing.T, name string) *dto.MetricFamily {
	t.Helper()
	mfs, err := s.m.Registry().Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf
		}
	}
	return nil
}

// requests counts the requests recorded with status, on route ("" any).
func (s *metricsServer) requests(t *testing.T, route, status string) uint64 {
	t.Helper()
	var n uint64
	mf := s.family(t, "lockd_http_request_duration_seconds")
	if mf == nil {
		return 0
	}
	for _, m := range mf.GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["status"] == status && (route == "" || labels["route"] == route) {
			n += m.GetHistogram().GetSampleCount()
		}
	}
	return n
}

// value is a gauge's or counter's value; ok is false when it is absent.
func (s *metricsServer) value(t *testing.T, name string) (v float64, ok bool) {
	t.Helper()
	mf := s.family(t, name)
	if mf == nil || len(mf.GetMetric()) == 0 {
		return 0, false
	}
	m := mf.GetMetric()[0]
	if m.Gauge != nil {
		return m.GetGauge().GetValue(), true
	}
	return m.GetCounter().GetValue(), true
}

// eventually polls cond every 20 ms for up to d (generous: the machine is
// shared) and reports whether it became true.
func eventually(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// stallBackend is the real backend, except that inspect, renew, release
// and list of keys starting "stall." first wait for their caller's context
// to end: a store slower than the client's patience.
type stallBackend struct {
	backend.Backend
	entered chan string // gets the operation's name as it starts waiting
}

func (b stallBackend) stall(ctx context.Context, op, key string) {
	if strings.HasPrefix(key, "stall.") {
		b.entered <- op
		<-ctx.Done()
	}
}

func (b stallBackend) Inspect(ctx context.Context, key string) (backend.LockState, error) {
	b.stall(ctx, "inspect", key)
	return b.Backend.Inspect(ctx, key)
}

func (b stallBackend) Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (backend.Grant, error) {
	b.stall(ctx, "renew", key)
	return b.Backend.Renew(ctx, key, leaseID, ttl)
}

func (b stallBackend) Release(ctx context.Context, key, leaseID string) error {
	b.stall(ctx, "release", key)
	return b.Backend.Release(ctx, key, leaseID)
}

func (b stallBackend) List(ctx context.Context, prefix, after string, limit int) ([]backend.LockState, error) {
	b.stall(ctx, "list", prefix)
	return b.Backend.List(ctx, prefix, after, limit)
}

// A client that goes away before its answer is not a server error: the
// request is counted with status 499 (nginx's "client closed request"),
// never 500, and nothing is logged as a failure — for a long poll whose
// client gives up, and for plain requests whose client stops waiting for a
// slow store.
func TestClientThatLeavesIsNot500(t *testing.T) {
	entered := make(chan string)
	s := newMetricsServer(t, func(b backend.Backend) backend.Backend { return stallBackend{b, entered} })
	ctx := t.Context()

	if st := s.send(ctx, "POST", "/v1/locks/gone.poll/acquire", `{"ttl_ms": 30000}`); st != 200 {
		t.Fatalf("first acquire: status %d, want 200", st)
	}
	const acquireRoute = "/v1/locks/{key}/acquire"
	polled := s.requests(t, acquireRoute, "200")
	pollCtx, cancel := context.WithCancel(ctx)
	done := make(chan int, 1)
	go func() { done <- s.send(pollCtx, "POST", "/v1/locks/gone.poll/acquire", `{"wait_ms": 60000}`) }()
	if !eventually(20*time.Second, func() bool { v, _ := s.value(t, "lockd_waiters"); return v == 1 }) {
		t.Fatalf("the long poll never showed in lockd_waiters")
	}
	cancel()
	<-done
	if !eventually(20*time.Second, func() bool { return s.requests(t, acquireRoute, "499") == 1 }) {
		t.Errorf("long poll left by its client: %d requests counted 499, want 1 (200: %d, was %d; 500: %d)",
			s.requests(t, acquireRoute, "499"), s.requests(t, acquireRoute, "200"), polled, s.requests(t, acquireRoute, "500"))
	}
	if got := s.requests(t, acquireRoute, "200"); got != polled {
		t.Errorf("long poll left by its client counted as 200 (%d, was %d)", got, polled)
	}

	id := `{"lease_id": "AAAAAAAAAAAAAAAAAAAAAA"}`
	for _, c := range []struct{ op, method, path, body, route string }{
		{"inspect", "GET", "/v1/locks/stall.k", "", "/v1/locks/{key}"},
		{"renew", "POST", "/v1/locks/stall.k/renew", id, "/v1/locks/{key}/renew"},
		{"release", "POST", "/v1/locks/stall.k/release", id, "/v1/locks/{key}/release"},
		{"list", "GET", "/v1/locks?prefix=stall.", "", "/v1/locks"},
	} {
		reqCtx, cancel := context.WithCancel(ctx)
		done := make(chan int, 1)
		go func() { done <- s.send(reqCtx, c.method, c.path, c.body) }()
		select {
		case op := <-entered:
			if op != c.op {
				t.Fatalf("the store saw %s, want %s", op, c.op)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%s never reached the store", c.op)
		}
		cancel()
		<-done
		if !eventually(20*time.Second, func() bool { return s.requests(t, c.route, "499") == 1 }) {
			t.Errorf("%s left by its client: %d requests counted 499 on %s, want 1 (500: %d)",
				c.op, s.requests(t, c.route, "499"), c.route, s.requests(t, c.route, "500"))
		}
	}
	if n := s.requests(t, "", "500"); n != 0 {
		t.Errorf("%d requests counted as 500, want 0: a client leaving is not a server error", n)
	}
	if log := s.log.String(); strings.Contains(log, "request failed") || strings.Contains(log, "internal_error") {
		t.Errorf("clients leaving were logged as failures:\n%s", log)
	}
}

// lockd_held_locks is what the store holds, on every replica: a lease that
// ran out with nobody touching its key drops out of it (it stayed counted
// before: up on grant, down only on release or a noticed expiry), a released
// lock is not counted, and a replica that granted nothing sees the other's
// grants. lockd_leases_expired_total counts the expired grant a waiter's
// timer removed, and not the one nobody asked for again, as the README says.
func TestHeldLocksIsWhatTheStoreHolds(t *testing.T) {
	e := testserver.EtcdCluster(t, 1)
	s := newReplica(t, e.Endpoints(), nil)
	ctx := t.Context()
	for _, k := range []string{"held.long", "held.short", "held.waited"} {
		ttl := "60000"
		if k != "held.long" {
			ttl = "1000"
		}
		if st := s.send(ctx, "POST", "/v1/locks/"+k+"/acquire", `{"ttl_ms": `+ttl+`}`); st != 200 {
			t.Fatalf("acquire %s: status %d", k, st)
		}
	}
	st, lease := s.acquireLease(t, "held.released")
	if st != 200 {
		t.Fatalf("acquire held.released: status %d", st)
	}
	if st := s.send(ctx, "POST", "/v1/locks/held.released/release", `{"lease_id": "`+lease+`"}`); st != 204 {
		t.Fatalf("release: status %d", st)
	}
	waited := make(chan int, 1)
	go func() {
		waited <- s.send(ctx, "POST", "/v1/locks/held.waited/acquire", `{"ttl_ms": 60000, "wait_ms": 30000}`)
	}()
	select {
	case st := <-waited:
		if st != 200 {
			t.Fatalf("waiter on held.waited: status %d, want 200", st)
		}
	case <-time.After(40 * time.Second):
		t.Fatalf("waiter on held.waited never granted")
	}
	held := func(s *metricsServer) float64 {
		v, ok := s.value(t, "lockd_held_locks")
		if !ok {
			t.Fatalf("lockd_held_locks absent with the store up")
		}
		return v
	}
	// Only scrapes touch the store from now on.
	if !eventually(30*time.Second, func() bool { return held(s) == 2 }) {
		t.Errorf("lockd_held_locks = %v long after held.short ran out untouched, want 2 (held.long and the waiter's held.waited)", held(s))
	}
	if v, _ := s.value(t, "lockd_leases_expired_total"); v != 1 {
		t.Errorf("lockd_leases_expired_total = %v, want 1: held.waited's grant, removed by its waiter; held.short's is never counted", v)
	}
	other := newReplica(t, e.Endpoints(), nil) // granted nothing
	if got := held(other); got != 2 {
		t.Errorf("other replica: lockd_held_locks = %v, want the store's 2", got)
	}
}

// acquireLease acquires key (TTL 60 s) and returns the status and lease id.
func (s *metricsServer) acquireLease(t *testing.T, key string) (int, string) {
	t.Helper()
	resp, err := http.Post(s.url+"/v1/locks/"+key+"/acquire", "application/json", strings.NewReader(`{"ttl_ms": 60000}`))
	if err != nil {
		t.Fatalf("acquire %s: %v", key, err)
	}
	defer resp.Body.Close()
	var g struct {
		LeaseID string `json:"lease_id"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&g)
	return resp.StatusCode, g.LeaseID
}
