package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lockd/lockd/backend/etcd/embedded"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockd/lockd/backend"
	etcdb "github.com/lockd/lockd/backend/etcd"
)

// startEmbedded starts lockd's embedded etcd as lockd does, configured by
// c, on free loopback ports and in a temp dir, for one test.
func startEmbedded(tb testing.TB, c embedded.Config) *embedded.Server {
	tb.Helper()
	port := func() int {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
	c.DataDir = tb.TempDir()
	c.ClientURL = fmt.Sprintf("http://127.0.0.1:%d", port())
	c.PeerURL = fmt.Sprintf("http://127.0.0.1:%d", port())
	c.LogLevel = "fatal"
	c.StartTimeout = 90 * time.Second
	e, err := embedded.Start(context.Background(), c)
	if err != nil {
		tb.Fatalf("embedded etcd: %v", err)
	}
	tb.Cleanup(func() { e.Close() })
	return e
}

// cycle is one acquire and release of key with an owner of owner's size.
func cycle(ctx context.Context, b *etcdb.Backend, key, owner string) error {
	g, err := b.Acquire(ctx, backend.AcquireRequest{Key: key, Owner: owner, TTL: 10 * time.Second})
	if err != nil {
		return fmt.Errorf("acquire: %w", err)
	}
	if err := b.Release(ctx, key, g.LeaseID); err != nil {
		return fmt.Errorf("release: %w", err)
	}
	return nil
}

// compactBehind makes a real compaction happen just past what a wrapped
// call is about to ask for: it writes a key and compacts the store to that
// write's revision, and returns the revision before it, now compacted away.
// Both wrappers below use it a set number of times, then pass calls on.
type compactBehind struct {
	kv   clientv3.KV // the real one: the wrappers' own calls are not faults
	cli  *clientv3.Client
	left atomic.Int32
	done atomic.Int32
	mu   sync.Mutex
	errs []error
}

func (f *compactBehind) inject(ctx context.Context) (int64, bool) {
	if f.left.Add(-1) < 0 {
		return 0, false
	}
	p, err := f.kv.Put(ctx, "/fault/compact", "x")
	if err == nil {
		_, err = f.cli.Compact(ctx, p.Header.Revision)
	}
	if err != nil {
		f.mu.Lock()
		f.errs = append(f.errs, err)
		f.mu.Unlock()
		return 0, false
	}
	f.done.Add(1)
	return p.Header.Revision - 1, true
}

func (f *compactBehind) check(t *testing.T, want int32) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := errors.Join(f.errs...); err != nil {
		t.Fatalf("injecting the compaction: %v", err)
	}
	if got := f.done.Load(); got != want {
		t.Fatalf("%d compactions injected, want %d: the fault never hit", got, want)
	}
}

// laggingWatcher opens a watch as one that fell behind a compaction: from a
// revision the server has compacted, which it answers by cancelling the
// watch with ErrCompacted, as it does to a slow watcher under load.
type laggingWatcher struct {
	clientv3.Watcher
	f *compactBehind
}

func (w *laggingWatcher) Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	if rev, ok := w.f.inject(ctx); ok {
		opts = append(opts, clientv3.WithRev(rev))
	}
	return w.Watcher.Watch(ctx, key, opts...)
}

// compactingKV compacts past the revision of a read at a past revision
// just before it is sent.
type compactingKV struct {
	clientv3.KV
	f *compactBehind
}

func (k *compactingKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if clientv3.OpGet(key, opts...).Rev() > 0 {
		k.f.inject(ctx)
	}
	return k.KV.Get(ctx, key, opts...)
}

// A waiter whose watch etcd cancels because its revision was compacted
// (what a waiter that fell behind sees once lockd compacts) looks at the
// queue again and is granted the lock at the release, not ErrUnavailable.
func TestWaiterWatchCompacted(t *testing.T) {
	e := startEmbedded(t, embedded.Config{})
	holder := etcdb.New(client(t, e.Endpoints()), etcdb.Options{})
	t.Cleanup(func() { holder.Close() })
	cli := client(t, e.Endpoints())
	f := &compactBehind{kv: cli.KV, cli: cli}
	f.left.Store(1)
	cli.Watcher = &laggingWatcher{Watcher: cli.Watcher, f: f}
	waiter := etcdb.New(cli, etcdb.Options{})
	t.Cleanup(func() { waiter.Close() })
	ctx := t.Context()

	g, err := holder.Acquire(ctx, backend.AcquireRequest{Key: "lagging", TTL: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		g   backend.Grant
		err error
	}
	done := make(chan result, 1)
	go func() {
		w, err := waiter.Acquire(ctx, backend.AcquireRequest{Key: "lagging", TTL: 30 * time.Second, Wait: 30 * time.Second})
		done <- result{w, err}
	}()
	// Release once the fault has hit and the waiter is still queued.
	deadline := time.Now().Add(20 * time.Second)
	for f.done.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // the cancelled watch reaches the waiter
	select {
	case r := <-done:
		t.Fatalf("waiter returned before the release: %+v, %v", r.g, r.err)
	default:
	}
	if err := holder.Release(ctx, "lagging", g.LeaseID); err != nil {
		t.Fatal(err)
	}
	r := <-done
	f.check(t, 1)
	if r.err != nil {
		t.Fatalf("waiter: %v, want the grant", r.err)
	}
	if r.g.Token <= g.Token {
		t.Errorf("waiter's token %d after the holder's %d", r.g.Token, g.Token)
	}
}

// The embedded etcd compacts: with a quota that its uncompacted history
// would fill several times over, every acquire and release succeeds and
// etcd raises no alarm. Without compaction the same run hits NOSPACE,
// which lockd reports as ErrUnavailable: that case shows the quota is small
// enough to matter.
//
// etcd's quota counts the size of its database file, which never shrinks
// without a defragmentation; compaction frees pages inside it, which later
// writes reuse, so the file stops growing. No defragmentation is done.
func TestQuotaHeldByCompaction(t *testing.T) {
	const (
		quota   = 1 << 20
		workers = 8
		cycles  = 1000 // per worker: 8,000 in all
	)
	owner := strings.Repeat("o", 256)
	for _, tc := range []struct {
		name      string
		cfg       embedded.Config
		wantSpace bool // NOSPACE expected
	}{
		{"compacted", embedded.Config{QuotaBackendBytes: quota}, false}, // the default compaction
		{"uncompacted", embedded.Config{QuotaBackendBytes: quota, NoCompaction: true}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startEmbedded(t, tc.cfg)
			cli := client(t, e.Endpoints())
			b := etcdb.New(cli, etcdb.Options{})
			t.Cleanup(func() { b.Close() })
			ctx := t.Context()
			var (
				ok    atomic.Int64
				wg    sync.WaitGroup
				errMu sync.Mutex
				first error
			)
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range cycles {
						if err := cycle(ctx, b, fmt.Sprint("quota-", w), owner); err != nil {
							errMu.Lock()
							if first == nil {
								first = err
							}
							errMu.Unlock()
							return
						}
						ok.Add(1)
					}
				}()
			}
			wg.Wait()
			alarms, err := cli.AlarmList(ctx)
			if err != nil {
				t.Fatal(err)
			}
			st, err := cli.Status(ctx, e.Endpoints()[0])
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%d cycles; database file %d bytes, %d in use, quota %d; compacted to revision %d of %d; alarms %v",
				ok.Load(), st.DbSize, st.DbSizeInUse, quota, e.Compacted(), st.Header.Revision, alarms.Alarms)
			if !tc.wantSpace {
				if first != nil {
					t.Errorf("after %d cycles: %v", ok.Load(), first)
				}
				if len(alarms.Alarms) != 0 {
					t.Errorf("alarms %v, want none", alarms.Alarms)
				}
				if st.DbSize >= quota {
					t.Errorf("database file %d bytes, want it below the quota %d", st.DbSize, quota)
				}
				return
			}
			if !errors.Is(first, backend.ErrUnavailable) || !strings.Contains(first.Error(), "space exceeded") {
				t.Errorf("uncompacted: first error %v after %d cycles, want ErrUnavailable for NOSPACE", first, ok.Load())
			}
		})
	}
}
