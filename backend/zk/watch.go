package zk

// Key events: a follower on the key's queue (follow.go) and the tracker an
// election's observer uses (observe.go), with a lock's events as its sink.
//
// A watcher's ephemeral node in the key's container does two things: it
// keeps ZooKeeper from reaping the container, and it tells every replica
// that the key is watched (its listing shows the node), so that removing
// the holder logs the ended grant in the container's data, as an election
// always does (removeHead). That log is how a grant that began and ended
// between two of the watcher's reads is still delivered. A removal whose
// listing was read before the watcher's node existed does not log; it can
// only remove a grant made before that listing, which the watcher's first
// read (made after its node) already showed, so the watcher sees it end.
//
// ZooKeeper keeps no history of a key, so a stream resumes only from a
// cursor naming the grant that still holds (backend.StateCursor), and
// resyncs otherwise.

import (
	"context"
	"fmt"
	"time"

	"github.com/lockd/lockd/backend"
)

var _ backend.Watcher = (*Backend)(nil)

// WatchFeatures implements backend.Watcher.
func (b *Backend) WatchFeatures() backend.WatchFeatures {
	return backend.WatchFeatures{Replay: false, Changes: "watch"}
}

// Watch implements backend.Watcher.
func (b *Backend) Watch(ctx context.Context, key, after string) (<-chan backend.KeyEvent, error) {
	f := &follower{b: b, kp: b.keyPath(key), outage: b.outage}
	v, err := f.read(ctx)
	if err != nil {
		f.close()
		return nil, unavailable("watch", err)
	}
	w := &keyWatch{ctx: ctx, out: make(chan backend.KeyEvent, 16)}
	tr := &tracker{clk: b.clock, what: fmt.Sprintf("watch %q", key), sink: w}
	if after != "" {
		held, token, ok := backend.ParseStateCursor(after)
		if now := tr.head(v); ok && held && now != nil && now.id == token {
			tr.resume(v) // the same grant holds: nothing was missed
		} else {
			w.resync = true
		}
	}
	go func() {
		err := f.follow(ctx, v, tr.publish)
		f.close()
		w.end(err)
	}()
	return w.out, nil
}

// keyWatch is the sink of a key's stream.
type keyWatch struct {
	ctx    context.Context
	out    chan backend.KeyEvent
	resync bool // the first event is a snapshot with Resync
}

func (w *keyWatch) first(cur *term, last uint64, _ string) error {
	ev := backend.KeyEvent{Kind: backend.KeySnapshot, Resync: w.resync, Token: last, Cursor: backend.StateCursor(false, last)}
	if cur != nil {
		ev = backend.KeyEvent{Kind: backend.KeySnapshot, Resync: w.resync, Held: true, Token: cur.id, Owner: cur.owner, ExpiresAt: cur.expires,
			Cursor: backend.StateCursor(true, cur.id)}
	}
	if !ev.Held {
		ev.Token = 0 // a free snapshot names no grant; its cursor keeps the last
	}
	return w.send(ev)
}

func (w *keyWatch) began(t term) error {
	return w.send(backend.KeyEvent{Kind: backend.KeyAcquired, Token: t.id, Owner: t.owner, ExpiresAt: t.expires, Cursor: backend.StateCursor(true, t.id)})
}

// changed is a new value in the same grant: locks have none.
func (w *keyWatch) changed(term) error { return nil }

func (w *keyWatch) ended(id uint64, reason string) error {
	kind := backend.KeyReleased
	if reason == backend.ReasonExpired {
		kind = backend.KeyExpired
	}
	return w.send(backend.KeyEvent{Kind: kind, Token: id, Cursor: backend.StateCursor(false, id)})
}

func (w *keyWatch) send(ev backend.KeyEvent) error {
	select {
	case w.out <- ev:
		return nil
	case <-w.ctx.Done():
		return w.ctx.Err()
	}
}

// end sends the stream's last event, carrying why it ended, and closes it.
func (w *keyWatch) end(err error) {
	select {
	case w.out <- backend.KeyEvent{Err: err}:
	case <-time.After(time.Second): // nobody reads any more
	}
	close(w.out)
}
