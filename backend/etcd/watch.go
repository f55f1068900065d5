package etcd

// Watching a lock key: a mirror of its queue (mirror.go), whose holder is
// re-derived from the whole queue after every change, and a timer at the
// holder's deadline plus the declared skew that sends expired once a re-read
// of the store confirms the grant is still overdue and not renewed.
//
// A cursor is "<revision>.<h|f>.<token>": the revision of the copy the
// event was derived from, and the state it left the stream in (held by
// token, or free after token). A resume reads the queue at that revision,
// checks the state matches, and replays the watch from the next revision:
// nothing in between is missed. A compacted, future or malformed cursor, a
// state that does not match, or a removal the history cannot tell apart
// (released or expired) gives a resync snapshot.

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/lockd/lockd/backend"
)

var _ backend.Watcher = (*Backend)(nil)

// WatchFeatures implements backend.Watcher.
func (b *Backend) WatchFeatures() backend.WatchFeatures {
	return backend.WatchFeatures{Replay: true, Changes: "watch"}
}

// Watch implements backend.Watcher.
func (b *Backend) Watch(ctx context.Context, key, after string) (<-chan backend.KeyEvent, error) {
	w := &keyWatch{m: mirror{q: b, name: key}, out: make(chan backend.KeyEvent, 16)}
	first, err := w.start(ctx, after)
	if err != nil {
		return nil, err
	}
	go w.run(ctx, first)
	return w.out, nil
}

type keyWatch struct {
	m   mirror
	out chan backend.KeyEvent

	leading *entry // the grant last sent as holding; nil when free
	after   uint64 // the highest token sent: grants up to it are not news
	// history is the store's revision when a resume read the queue: the
	// events up to it are replayed, and a removal among them whose
	// deadline has passed cannot be told released or expired.
	history int64
	// renewed is a deadline a re-read found beyond the copy's (the watch
	// has not caught up yet): the timer waits for it.
	renewed time.Time
}

// start reads where the stream begins and returns its first event, if any
// (none when a resume goes on without a gap).
func (w *keyWatch) start(ctx context.Context, after string) (*backend.KeyEvent, error) {
	if after == "" {
		if err := w.m.load(ctx, 0); err != nil {
			return nil, err
		}
		ev := w.snapshot(ctx, false)
		return &ev, nil
	}
	rev, held, token, ok := parseCursor(after)
	if ok {
		err := w.m.load(ctx, rev)
		switch {
		case err == nil:
			if w.resumable(held, token) {
				w.history = w.m.read
				return nil, nil
			}
		case !historyGone(err):
			return nil, err
		}
	}
	if err := w.m.load(ctx, 0); err != nil {
		return nil, err
	}
	// No history: only the same grant still holding means nothing was
	// missed.
	if h := w.m.holder(ctx); ok && held && h != nil && uint64(h.createRev) == token {
		w.leading, w.after = h, token
		return nil, nil
	}
	ev := w.snapshot(ctx, true)
	return &ev, nil
}

// resumable reports whether the copy, read at the cursor's revision, is in
// the state the cursor names, and takes that state.
func (w *keyWatch) resumable(held bool, token uint64) bool {
	if token > uint64(w.m.rev) {
		return false
	}
	h := w.m.head()
	switch {
	case held && (h == nil || !h.rec.held() || uint64(h.createRev) != token):
		return false
	case !held && h != nil && h.rec.held() && uint64(h.createRev) > token:
		return false
	}
	w.leading, w.after = nil, token
	if held {
		w.leading = h
	}
	return true
}

func (w *keyWatch) snapshot(ctx context.Context, resync bool) backend.KeyEvent {
	w.leading, w.history, w.renewed = nil, 0, time.Time{}
	ev := backend.KeyEvent{Kind: backend.KeySnapshot, Resync: resync}
	if h := w.m.head(); h != nil && h.rec.held() {
		w.after = max(w.after, uint64(h.createRev)) // overdue, or held: either way not news
	}
	if h := w.m.holder(ctx); h != nil {
		w.leading = h
		ev.Held, ev.Token, ev.Owner, ev.ExpiresAt = true, uint64(h.createRev), h.rec.Owner, h.rec.deadline()
	}
	ev.Cursor = w.cursor()
	return ev
}

func (w *keyWatch) cursor() string {
	if w.leading != nil {
		return fmt.Sprintf("%d.h.%d", w.m.rev, w.leading.createRev)
	}
	return fmt.Sprintf("%d.f.%d", w.m.rev, w.after)
}

func parseCursor(s string) (rev int64, held bool, token uint64, ok bool) {
	r, state, found := strings.Cut(s, ".")
	if !found {
		return 0, false, 0, false
	}
	rev, err := strconv.ParseInt(r, 10, 64)
	if err != nil || rev <= 0 || strconv.FormatInt(rev, 10) != r {
		return 0, false, 0, false
	}
	held, token, ok = backend.ParseStateCursor(state)
	return rev, held, token, ok
}

// step sends what changed since the last event, if anything.
func (w *keyWatch) step(ctx context.Context) error {
	clock := w.m.q.opts.Clock
	h := w.m.head()
	if h != nil && !h.rec.held() {
		h = nil // a waiter at the head, not yet granted
	}
	if w.leading != nil {
		if h != nil && h.createRev == w.leading.createRev {
			w.leading = h // a renewal keeps the grant; the deadline moves
			if !h.rec.overdue(clock) {
				return nil
			}
			return w.confirmExpired(ctx)
		}
		// The grant's entry is gone: released in time, or removed once
		// expired. A removal replayed from history after its deadline
		// could be either.
		kind := backend.KeyReleased
		if !clock.Valid(w.leading.rec.deadline()) {
			if w.m.rev <= w.history {
				return errReread
			}
			kind = backend.KeyExpired
		}
		if err := w.end(ctx, kind); err != nil {
			return err
		}
	}
	if h == nil || uint64(h.createRev) <= w.after {
		return nil
	}
	w.leading, w.after, w.renewed = h, uint64(h.createRev), time.Time{}
	if err := w.send(ctx, backend.KeyEvent{Kind: backend.KeyAcquired, Token: w.after, Owner: h.rec.Owner, ExpiresAt: h.rec.deadline(), Cursor: w.cursor()}); err != nil {
		return err
	}
	if h.rec.overdue(clock) { // a grant replayed from history, run out since
		return w.confirmExpired(ctx)
	}
	return nil
}

// confirmExpired re-reads the overdue holder's entry: still there and still
// overdue, it expired; renewed, the watch will bring the renewal (the timer
// waits for it); gone, the watch will bring the removal.
func (w *keyWatch) confirmExpired(ctx context.Context) error {
	c, cancel := w.m.q.opCtx(ctx)
	defer cancel()
	resp, err := w.m.q.cli.Get(c, w.leading.key)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		w.renewed = w.m.q.opts.Clock.Now().Add(200 * time.Millisecond) // try again soon
		return nil
	}
	e, err := w.m.q.entryFrom((*etcdserverpb.RangeResponse)(resp))
	if err != nil {
		return err
	}
	clock := w.m.q.opts.Clock
	switch {
	case e == nil:
		w.renewed = clock.Now().Add(100 * time.Millisecond)
		return nil
	case e.createRev == w.leading.createRev && !e.rec.overdue(clock):
		w.renewed = clock.FreeAt(e.rec.deadline())
		return nil
	}
	return w.end(ctx, backend.KeyExpired)
}

// end sends the end of the grant last sent as holding.
func (w *keyWatch) end(ctx context.Context, kind string) error {
	token := uint64(w.leading.createRev)
	w.leading, w.renewed = nil, time.Time{}
	return w.send(ctx, backend.KeyEvent{Kind: kind, Token: token, Cursor: w.cursor()})
}

// reread follows a read of the queue that lost history: a resync snapshot.
func (w *keyWatch) reread(ctx context.Context) error {
	return w.send(ctx, w.snapshot(ctx, true))
}

// wake is when the holder's grant may be removed (its deadline plus the
// declared skew, by this replica's clock), or when a re-read is due.
func (w *keyWatch) wake() (time.Duration, bool) {
	if w.leading == nil {
		return 0, false
	}
	c := w.m.q.opts.Clock
	at := c.FreeAt(w.leading.rec.deadline())
	if w.renewed.After(at) {
		at = w.renewed
	}
	return c.Until(at), true
}

func (w *keyWatch) send(ctx context.Context, ev backend.KeyEvent) error {
	select {
	case w.out <- ev:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *keyWatch) run(ctx context.Context, first *backend.KeyEvent) {
	var err error
	if first != nil {
		err = w.send(ctx, *first)
	}
	if err == nil {
		err = w.m.follow(ctx, w)
	}
	// The stream's last event carries why it ended.
	select {
	case w.out <- backend.KeyEvent{Err: err}:
	case <-time.After(time.Second): // nobody reads any more
	}
	close(w.out)
}
