package etcd_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockd/lockd/backend"
	etcdb "github.com/lockd/lockd/backend/etcd"
	"github.com/lockd/lockd/internal/testserver"
)

// Many waiters over many held keys, all launched at once through one
// Backend (what the compare's long-poll step does through one lockd): every
// one of them gets its queue entry. LOCKD_MANYKEYS_WAITERS sets the count
// (50000: the compare's), LOCKD_MANYKEYS_KEYS the keys,
// LOCKD_MANYKEYS_SLOTS Options.MaxContendedOps, LOCKD_MANYKEYS_HEAP a file
// for a heap profile while they wait, and LOCKD_MANYKEYS_DUMP one for the
// goroutines when it fails.
func TestManyWaitersOverManyKeysAllQueue(t *testing.T) {
	keys, n := 1000, 2000
	if s := os.Getenv("LOCKD_MANYKEYS_WAITERS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	if s := os.Getenv("LOCKD_MANYKEYS_KEYS"); s != "" {
		keys, _ = strconv.Atoi(s)
	}
	e := testserver.EtcdCluster(t, 1)
	cli := client(t, e.Endpoints())
	slots, _ := strconv.Atoi(os.Getenv("LOCKD_MANYKEYS_SLOTS"))
	b := etcdb.New(cli, etcdb.Options{MaxContendedOps: slots})
	t.Cleanup(func() { b.Close() })
	ctx := t.Context()
	key := func(i int) string { return fmt.Sprintf("many-%d", i%keys) }
	for k := 0; k < keys; k++ {
		if _, err := b.Acquire(ctx, backend.AcquireRequest{Key: key(k), TTL: 10 * time.Minute}); err != nil {
			t.Fatalf("holder's acquire of %s: %v", key(k), err)
		}
	}
	var (
		wg       sync.WaitGroup
		failed   atomic.Int64
		firstErr atomic.Value
	)
	t.Cleanup(wg.Wait)
	var ms0 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	start := time.Now()
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := b.Acquire(ctx, backend.AcquireRequest{Key: key(i), TTL: time.Minute, Wait: 4 * time.Minute})
			if err != nil && ctx.Err() == nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
			}
		}()
	}
	deadline := time.Now().Add(3 * time.Minute)
	queued := 0
	for {
		queued = 0
		for k := 0; k < keys; k++ {
			if st, err := b.Inspect(ctx, key(k)); err == nil {
				queued += st.Waiters
			}
		}
		if queued == n || failed.Load() > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	took := time.Since(start)
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	heap, stack := float64(ms.HeapInuse)-float64(ms0.HeapInuse), float64(ms.StackInuse)-float64(ms0.StackInuse)
	t.Logf("%d of %d waiters queued over %d keys in %v, %d failed; heap in use +%.0f MB (%.1f KB/waiter), stacks +%.0f MB (%.1f KB/waiter), %d goroutines",
		queued, n, keys, took.Round(time.Millisecond), failed.Load(),
		heap/(1<<20), heap/1024/float64(n), stack/(1<<20), stack/1024/float64(n), runtime.NumGoroutine())
	if p := os.Getenv("LOCKD_MANYKEYS_HEAP"); p != "" {
		if f, err := os.Create(p); err == nil {
			_ = pprof.WriteHeapProfile(f)
			f.Close()
		}
	}
	if queued != n || failed.Load() != 0 {
		if os.Getenv("LOCKD_MANYKEYS_DUMP") != "" {
			buf := make([]byte, 64<<20)
			_ = os.WriteFile(os.Getenv("LOCKD_MANYKEYS_DUMP"), buf[:runtime.Stack(buf, true)], 0o644)
		}
		t.Fatalf("got %d of %d waiters queued (%d failed, first error: %v), want all", queued, n, failed.Load(), firstErr.Load())
	}
}

// writeCountingKV counts the transactions with a write in them sent
// through the real client's KV (each one a raft proposal in etcd), and
// holds back by delay those sent before slowUntil (unix ns), so that a
// burst of callers all start before the first reply.
type writeCountingKV struct {
	clientv3.KV
	delay     time.Duration
	slowUntil atomic.Int64
	writes    atomic.Int64
	// failFirstTries: a write transaction with no Else (an acquire's
	// first try; an enqueue has one) fails unsent, as a timeout.
	failFirstTries atomic.Bool
}

func (kv *writeCountingKV) Txn(ctx context.Context) clientv3.Txn {
	return &countingTxn{Txn: kv.KV.Txn(ctx), kv: kv}
}

type countingTxn struct {
	clientv3.Txn
	kv             *writeCountingKV
	write, hasElse bool
}

func (t *countingTxn) If(cs ...clientv3.Cmp) clientv3.Txn { t.Txn = t.Txn.If(cs...); return t }

func (t *countingTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.note(ops)
	t.Txn = t.Txn.Then(ops...)
	return t
}

func (t *countingTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.note(ops)
	t.hasElse = t.hasElse || len(ops) > 0
	t.Txn = t.Txn.Else(ops...)
	return t
}

func (t *countingTxn) note(ops []clientv3.Op) {
	for _, op := range ops {
		t.write = t.write || op.IsPut() || op.IsDelete()
	}
}

func (t *countingTxn) Commit() (*clientv3.TxnResponse, error) {
	if t.write && !t.hasElse && t.kv.failFirstTries.Load() {
		return nil, context.DeadlineExceeded
	}
	if t.write {
		t.kv.writes.Add(1)
		if time.Now().UnixNano() < t.kv.slowUntil.Load() {
			time.Sleep(t.kv.delay)
		}
	}
	return t.Txn.Commit()
}

// heldThroughCountingKV is a backend on a fresh etcd whose client's KV
// counts (and can slow or fail) write transactions, with key held for ten
// minutes.
func heldThroughCountingKV(t *testing.T, key string) (*etcdb.Backend, *writeCountingKV) {
	t.Helper()
	e := testserver.EtcdCluster(t, 1)
	cli := client(t, e.Endpoints())
	kv := &writeCountingKV{KV: cli.KV, delay: 200 * time.Millisecond}
	cli.KV = kv
	b := etcdb.New(cli, etcdb.Options{})
	t.Cleanup(func() { b.Close() })
	if _, err := b.Acquire(t.Context(), backend.AcquireRequest{Key: key, TTL: 10 * time.Minute}); err != nil {
		t.Fatalf("holder's acquire: %v", err)
	}
	return b, kv
}

// A burst of acquirers on a held key, all arriving before the store
// answered the first: only one of them tries the write that takes a free
// key; the others queue at once. Each try is a raft proposal that etcd
// applies one after another; a burst of 50,000 over 1,000 held keys (the
// compare's long-poll step) made 50,000 of them at once, and those still
// unanswered after OpTimeout failed with "context deadline exceeded".
func TestBurstOnHeldKeyMakesOneFirstTry(t *testing.T) {
	const key, n = "burst", 200
	b, kv := heldThroughCountingKV(t, key)
	ctx := t.Context()
	w0 := kv.writes.Load()
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	errs := make(chan error, n)
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if _, err := b.Acquire(ctx, backend.AcquireRequest{Key: key, TTL: time.Minute, Wait: 5 * time.Minute}); err != nil && ctx.Err() == nil {
				errs <- err
			}
		}()
	}
	kv.slowUntil.Store(time.Now().Add(time.Second).UnixNano())
	close(start)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st, err := b.Inspect(ctx, key)
		if err == nil && st.Waiters == n {
			break
		}
		select {
		case err := <-errs:
			t.Fatalf("a waiter failed: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %d waiters to queue (last: %+v, %v)", n, st, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// One enqueue each, and one first try for the whole burst.
	if got, want := kv.writes.Load()-w0, int64(n+1); got > want {
		t.Errorf("got %d write transactions for %d waiters of a held key, want at most %d", got, n, want)
	}
}

// A first try that etcd does not answer in time fails its own acquire, but
// the acquirers that waited for it queue at once instead of each trying
// (and timing out) in turn: with etcd behind, a burst lost one poll per
// OpTimeout per key.
func TestFirstTryTimeoutQueuesTheOthers(t *testing.T) {
	const key, n = "first-try-timeout", 50
	b, kv := heldThroughCountingKV(t, key)
	ctx := t.Context()
	kv.failFirstTries.Store(true)
	var (
		wg     sync.WaitGroup
		failed atomic.Int64
	)
	t.Cleanup(wg.Wait)
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if _, err := b.Acquire(ctx, backend.AcquireRequest{Key: key, TTL: time.Minute, Wait: 5 * time.Minute}); err != nil && ctx.Err() == nil {
				failed.Add(1)
			}
		}()
	}
	close(start)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st, err := b.Inspect(ctx, key)
		if err == nil && int64(st.Waiters)+failed.Load() == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out: %+v, %v, %d failed", st, err, failed.Load())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := failed.Load(); got != 1 {
		t.Errorf("got %d of %d acquirers failed after first tries that timed out, want 1 (the one whose try it was)", got, n)
	}
}
