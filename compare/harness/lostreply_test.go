package harness

import (
	"context"
	"testing"
	"time"

	"github.com/lockd/lockd/backend"
)

// forgetsIdempotency claims to honour Idempotency-Key and drops it: every
// retry is a fresh acquire.
type forgetsIdempotency struct{ backend.Backend }

func (forgetsIdempotency) IdempotentAcquire() {}

func (f forgetsIdempotency) Acquire(ctx context.Context, req backend.AcquireRequest) (backend.Grant, error) {
	req.Idempotency = backend.Idempotency{}
	return f.Backend.Acquire(ctx, req)
}

// TestLostReplies: with the key no grant is orphaned; without it every lost
// grant blocks its key for about a TTL.
func TestLostReplies(t *testing.T) {
	if testing.Short() {
		t.Skip("runs over embedded etcd; skipped with -short")
	}
	d := etcdDeployment(t)
	res := runLostRepliesWrapped(t.Context(), d, true, time.Second, nil, nil)
	if res.Unmeasured != "" {
		t.Fatalf("not measured: %s", res.Unmeasured)
	}
	t.Logf("keyed %+v; unkeyed %+v", res.Keyed, res.Unkeyed)
	if res.Keyed.Lost == 0 || res.Unkeyed.Lost == 0 {
		t.Fatalf("no reply was lost (keyed %d, unkeyed %d): the proxy swallowed nothing", res.Keyed.Lost, res.Unkeyed.Lost)
	}
	if !res.Pass || res.Keyed.Orphaned != 0 || res.Keyed.Recovered != res.Keyed.Lost {
		t.Errorf("with Idempotency-Key: %d orphaned, %d of %d recovered; want 0 orphaned, all recovered", res.Keyed.Orphaned, res.Keyed.Recovered, res.Keyed.Lost)
	}
	if got, want := res.Unkeyed.Blocked, res.Unkeyed.Lost; got != want {
		t.Errorf("without a key: %d keys blocked, want %d (one per lost grant)", got, want)
	}
	ttl := time.Duration(res.TTLms) * time.Millisecond
	for _, ms := range res.Unkeyed.BlockedMs {
		if b := msDur(ms); b < ttl/2 {
			t.Errorf("a key was blocked only %s; a lost grant of TTL %s should hold it about that long", b, ttl)
		}
	}
}

// TestOrphanCheckIsShownToFail: a backend that ignores the key turns the
// orphaned-grants check red.
func TestOrphanCheckIsShownToFail(t *testing.T) {
	if testing.Short() {
		t.Skip("runs over embedded etcd; skipped with -short")
	}
	d := etcdDeployment(t)
	res := runLostRepliesWrapped(t.Context(), d, true, time.Second, nil, func(b backend.Backend) backend.Backend { return forgetsIdempotency{b} })
	if res.Unmeasured != "" {
		t.Fatalf("not measured: %s", res.Unmeasured)
	}
	if res.Pass || res.Keyed.Orphaned == 0 {
		t.Errorf("%s stayed green (%d orphaned of %d lost) with a backend that drops the key; want red", CheckOrphanedGrants, res.Keyed.Orphaned, res.Keyed.Lost)
	}
}
