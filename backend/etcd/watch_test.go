package etcd_test

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockd/lockd/backend"
	etcdb "github.com/lockd/lockd/backend/etcd"
	"github.com/lockd/lockd/backend/etcd/embedded"
)

// keyStream reads one Watch in a test.
type keyStream struct {
	t      *testing.T
	events <-chan backend.KeyEvent
	cancel context.CancelFunc
	last   string
}

func watchKey(t *testing.T, w backend.Watcher, key, after string) *keyStream {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	events, err := w.Watch(ctx, key, after)
	if err != nil {
		t.Fatalf("Watch(%q, %q): %v", key, after, err)
	}
	return &keyStream{t: t, events: events, cancel: cancel}
}

func (s *keyStream) next(within time.Duration) backend.KeyEvent {
	s.t.Helper()
	select {
	case ev := <-s.events:
		if ev.Err != nil {
			s.t.Fatalf("the stream ended: %v", ev.Err)
		}
		s.last = ev.Cursor
		return ev
	case <-time.After(within):
		s.t.Fatalf("no event within %v", within)
	}
	return backend.KeyEvent{}
}

// want reads the next event, wanting kind, token and (for snapshots) resync.
func (s *keyStream) want(kind string, token uint64, resync bool) backend.KeyEvent {
	s.t.Helper()
	ev := s.next(20 * time.Second)
	if ev.Kind != kind || ev.Token != token || ev.Resync != resync {
		s.t.Fatalf("event {%s token %d resync %v}, want {%s token %d resync %v}", ev.Kind, ev.Token, ev.Resync, kind, token, resync)
	}
	return ev
}

// quiet fails if an event comes within d.
func (s *keyStream) quiet(d time.Duration) {
	s.t.Helper()
	select {
	case ev := <-s.events:
		s.t.Fatalf("event %+v, want none yet", ev)
	case <-time.After(d):
	}
}

func (s *keyStream) stop() {
	s.t.Helper()
	s.cancel()
	for ev := range s.events {
		if ev.Err != nil {
			return
		}
	}
	s.t.Fatal("the stream closed without an error event")
}

// A watch that etcd cancels as compacted (a watcher fallen behind) reads
// the key afresh and says the history is lost (a resync snapshot), then
// goes on; no error ends the stream.
func TestWatchCompactedMidStreamResyncs(t *testing.T) {
	e := startEmbedded(t, embedded.Config{})
	holder := etcdb.New(client(t, e.Endpoints()), etcdb.Options{})
	t.Cleanup(func() { holder.Close() })
	cli := client(t, e.Endpoints())
	f := &compactBehind{kv: cli.KV, cli: cli}
	f.left.Store(1)
	cli.Watcher = &laggingWatcher{Watcher: cli.Watcher, f: f}
	watcher := etcdb.New(cli, etcdb.Options{})
	t.Cleanup(func() { watcher.Close() })
	ctx := t.Context()

	s := watchKey(t, watcher, "lagging", "")
	s.want(backend.KeySnapshot, 0, false)
	s.want(backend.KeySnapshot, 0, true)
	f.check(t, 1)
	g, err := holder.Acquire(ctx, backend.AcquireRequest{Key: "lagging", Owner: "a", TTL: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	s.want(backend.KeyAcquired, g.Token, false)
	if err := holder.Release(ctx, "lagging", g.LeaseID); err != nil {
		t.Fatal(err)
	}
	s.want(backend.KeyReleased, g.Token, false)
}

// A cursor whose revision was compacted away: the same grant still holding
// resumes without a snapshot; anything else resyncs.
func TestWatchResumeFromCompactedCursor(t *testing.T) {
	e := startEmbedded(t, embedded.Config{NoCompaction: true})
	cli := client(t, e.Endpoints())
	b := etcdb.New(cli, etcdb.Options{})
	t.Cleanup(func() { b.Close() })
	ctx := t.Context()
	compact := func() {
		t.Helper()
		p, err := cli.Put(ctx, "/fault/compact", "x")
		if err == nil {
			_, err = cli.Compact(ctx, p.Header.Revision)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	g, err := b.Acquire(ctx, backend.AcquireRequest{Key: "k", Owner: "a", TTL: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	s := watchKey(t, b, "k", "")
	s.want(backend.KeySnapshot, g.Token, false)
	s.stop()
	compact()
	s = watchKey(t, b, "k", s.last)
	if err := b.Release(ctx, "k", g.LeaseID); err != nil {
		t.Fatal(err)
	}
	s.want(backend.KeyReleased, g.Token, false)
	s.stop()
	compact()
	s = watchKey(t, b, "k", s.last)
	s.want(backend.KeySnapshot, 0, true)
}

// A grant made and released while the watcher was away, whose deadline has
// passed since: the history shows its entry removed but not whether in
// time, so the resumed stream resyncs rather than guess released or expired.
func TestWatchReplayCannotTellReleaseFromExpiry(t *testing.T) {
	e := startEmbedded(t, embedded.Config{NoCompaction: true})
	b := etcdb.New(client(t, e.Endpoints()), etcdb.Options{})
	t.Cleanup(func() { b.Close() })
	ctx := t.Context()
	s := watchKey(t, b, "k", "")
	s.want(backend.KeySnapshot, 0, false)
	s.stop()
	g, err := b.Acquire(ctx, backend.AcquireRequest{Key: "k", Owner: "a", TTL: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Release(ctx, "k", g.LeaseID); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(g.ExpiresAt) + 50*time.Millisecond)
	s = watchKey(t, b, "k", s.last)
	s.want(backend.KeyAcquired, g.Token, false)
	s.want(backend.KeySnapshot, 0, true)
}

// A grant made while the watcher was away by a replica gone since, overdue
// now and still in the store: the replay sends it acquired, then expired
// (the store confirms it was neither released nor renewed).
func TestWatchReplayExpiresOverdueGrant(t *testing.T) {
	e := startEmbedded(t, embedded.Config{NoCompaction: true})
	w := etcdb.New(client(t, e.Endpoints()), etcdb.Options{})
	t.Cleanup(func() { w.Close() })
	granter := etcdb.New(client(t, e.Endpoints()), etcdb.Options{})
	s := watchKey(t, w, "k", "")
	s.want(backend.KeySnapshot, 0, false)
	s.stop()
	g, err := granter.Acquire(t.Context(), backend.AcquireRequest{Key: "k", Owner: "a", TTL: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	granter.Close()
	time.Sleep(time.Until(g.ExpiresAt) + 50*time.Millisecond)
	s = watchKey(t, w, "k", s.last)
	s.want(backend.KeyAcquired, g.Token, false)
	s.want(backend.KeyExpired, g.Token, false)
}

// delayedWatcher delivers every watch response late, as a watcher behind a
// slow link sees them; the reads of its client are not delayed.
type delayedWatcher struct {
	clientv3.Watcher
	delay time.Duration
}

func (w *delayedWatcher) Watch(ctx context.Context, key string, opts ...clientv3.OpOption) clientv3.WatchChan {
	in := w.Watcher.Watch(ctx, key, opts...)
	out := make(chan clientv3.WatchResponse)
	go func() {
		defer close(out)
		for resp := range in {
			select {
			case <-time.After(w.delay):
			case <-ctx.Done():
				return
			}
			select {
			case out <- resp:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// The expiry timer fires at the old deadline while the renewal is still on
// its way through the watch: the re-read of the store shows the renewal, so
// no expired is sent; the release that follows is.
func TestWatchExpiryConfirmedByReread(t *testing.T) {
	e := startEmbedded(t, embedded.Config{})
	holder := etcdb.New(client(t, e.Endpoints()), etcdb.Options{})
	t.Cleanup(func() { holder.Close() })
	cli := client(t, e.Endpoints())
	cli.Watcher = &delayedWatcher{Watcher: cli.Watcher, delay: 1500 * time.Millisecond}
	watcher := etcdb.New(cli, etcdb.Options{})
	t.Cleanup(func() { watcher.Close() })
	ctx := t.Context()

	g, err := holder.Acquire(ctx, backend.AcquireRequest{Key: "slow", Owner: "a", TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	s := watchKey(t, watcher, "slow", "")
	s.want(backend.KeySnapshot, g.Token, false)
	if _, err := holder.Renew(ctx, "slow", g.LeaseID, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	s.quiet(time.Until(g.ExpiresAt) + time.Second) // past the old deadline, the renewal not yet seen
	if err := holder.Release(ctx, "slow", g.LeaseID); err != nil {
		t.Fatal(err)
	}
	s.want(backend.KeyReleased, g.Token, false)
}
