package etcd

// Observing an election: a watch on its queue from the current revision, a
// copy of the queue kept from the watch's events, and a timer at the
// leader's deadline plus the declared skew. The leader is always re-derived
// from the whole queue (the lowest create revision, holding an unexpired
// deadline), never taken from the last put seen.

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockd/lockd/backend"
)

// Observe implements backend.Elections.
func (el elections) Observe(ctx context.Context, name string) (<-chan backend.ElectionEvent, error) {
	o := &observer{q: el.q, name: name, out: make(chan backend.ElectionEvent, 16)}
	rev, err := o.load(ctx)
	if err != nil {
		return nil, err
	}
	go o.run(ctx, rev)
	return o.out, nil
}

type observer struct {
	q    *Backend
	name string
	out  chan backend.ElectionEvent

	queue   map[string]entry // the election's entries as last seen
	leading *entry           // the leader last sent; nil when none
	maxTerm uint64           // the highest term sent: terms only increase
	started bool
}

// load reads the whole queue afresh and returns the revision it was read at.
func (o *observer) load(ctx context.Context) (int64, error) {
	c, cancel := o.q.opCtx(ctx)
	defer cancel()
	resp, err := o.q.cli.Get(c, o.q.queue(o.name), clientv3.WithPrefix())
	if err != nil {
		return 0, fail(ctx, "read election", err)
	}
	o.queue = make(map[string]entry, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		e, err := o.q.decode(kv.Value, string(kv.Key), kv.CreateRevision, kv.ModRevision)
		if err != nil {
			return 0, err
		}
		o.queue[e.key] = e
	}
	return resp.Header.Revision, nil
}

// head is the entry with the lowest create revision, or nil.
func (o *observer) head() *entry {
	var h *entry
	for k := range o.queue {
		e := o.queue[k]
		if h == nil || e.createRev < h.createRev {
			h = &e
		}
	}
	return h
}

// derive is the leader the queue shows now: the head, when it holds a
// deadline that is not overdue by this replica's clock. A leader in a
// session has the session's deadline, read now (renewals of a session are
// no events: the timer at the deadline reads it again).
func (o *observer) derive(ctx context.Context) *entry {
	h := o.head()
	if h != nil && h.rec.S != "" {
		_ = o.q.resolve(ctx, h) // unreadable: the last deadline stands, and the next wake-up reads again
	}
	if h == nil || !h.rec.held() || h.rec.overdue(o.q.opts.Clock) {
		return nil
	}
	return h
}

// publish sends what changed since the last event, if anything. It returns
// false when ctx ended while sending.
func (o *observer) publish(ctx context.Context) bool {
	now := o.derive(ctx)
	if !o.started {
		o.started = true
		if now == nil {
			nl := &backend.NoLeader{}
			if h := o.head(); h != nil && h.rec.held() {
				nl = &backend.NoLeader{LastTerm: uint64(h.createRev), Reason: backend.ReasonExpired}
				o.maxTerm = nl.LastTerm
			}
			return o.send(ctx, backend.ElectionEvent{NoLeader: nl})
		}
	}
	if o.leading != nil && (now == nil || now.createRev != o.leading.createRev) {
		// The term ended: by its deadline, or before it (a resign).
		reason := backend.ReasonResigned
		if !o.q.opts.Clock.Valid(o.leading.rec.deadline()) {
			reason = backend.ReasonExpired
		}
		ended := uint64(o.leading.createRev)
		o.leading = nil
		if !o.send(ctx, backend.ElectionEvent{NoLeader: &backend.NoLeader{LastTerm: ended, Reason: reason}}) {
			return false
		}
	}
	if now == nil {
		return true
	}
	if o.leading == nil && uint64(now.createRev) <= o.maxTerm {
		return true // a term already ended on this stream never comes back
	}
	changed := o.leading == nil || o.leading.rec.Value != now.rec.Value
	o.leading = now // keeps the latest deadline, for the timer and the reason
	o.maxTerm = uint64(now.createRev)
	if !changed {
		return true
	}
	return o.send(ctx, backend.ElectionEvent{Leader: now.leader()})
}

func (o *observer) send(ctx context.Context, ev backend.ElectionEvent) bool {
	select {
	case o.out <- ev:
		return true
	case <-ctx.Done():
		return false
	}
}

// end sends the stream's last event, carrying why it ended, and closes it.
func (o *observer) end(ctx context.Context, err error) {
	select {
	case o.out <- backend.ElectionEvent{Err: err}:
	case <-time.After(time.Second): // nobody reads any more
	}
	close(o.out)
}

func (o *observer) apply(ev *clientv3.Event) error {
	k := string(ev.Kv.Key)
	if ev.Type == clientv3.EventTypeDelete {
		delete(o.queue, k)
		return nil
	}
	e, err := o.q.decode(ev.Kv.Value, k, ev.Kv.CreateRevision, ev.Kv.ModRevision)
	if err != nil {
		return err
	}
	o.queue[k] = e
	return nil
}

func (o *observer) run(ctx context.Context, rev int64) {
	if !o.publish(ctx) {
		o.end(ctx, ctx.Err())
		return
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		err := o.watch(ctx, rev, timer)
		if ctx.Err() != nil {
			o.end(ctx, ctx.Err())
			return
		}
		if o.q.life.Err() != nil {
			o.end(ctx, fmt.Errorf("%w: etcd backend closed", backend.ErrUnavailable))
			return
		}
		if err != nil && !compacted(err) {
			o.end(ctx, fmt.Errorf("%w: etcd watch: %v", backend.ErrUnavailable, err))
			return
		}
		// Compacted past our revision, or the watch was cut: read the
		// queue afresh and go on from there, sending what changed.
		if rev, err = o.load(ctx); err != nil {
			o.end(ctx, err)
			return
		}
		if !o.publish(ctx) {
			o.end(ctx, ctx.Err())
			return
		}
	}
}

// watch follows the queue from rev+1 until the watch fails (its error,
// nil when it just closed) or ctx ends.
func (o *observer) watch(ctx context.Context, rev int64, timer *time.Timer) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	// From the revision after the read: the current one, which etcd serves
	// at once, not the 100 ms unsynced path of a past revision.
	wch := o.q.cli.Watch(wctx, o.q.queue(o.name), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	for {
		o.arm(timer)
		select {
		case resp, ok := <-wch:
			if !ok {
				return nil
			}
			if err := resp.Err(); err != nil {
				return err
			}
			for _, ev := range resp.Events {
				if err := o.apply(ev); err != nil {
					return err
				}
				// One event at a time: a resign followed by the next
				// grant is a no_leader, then a leader.
				if !o.publish(ctx) {
					return ctx.Err()
				}
			}
		case <-timer.C:
			if !o.publish(ctx) {
				return ctx.Err()
			}
		case <-ctx.Done():
			return ctx.Err()
		case <-o.q.life.Done():
			return nil
		}
	}
}

// arm sets timer at the moment the current leader's grant may be removed
// (its deadline plus the declared skew, by this replica's clock).
func (o *observer) arm(timer *time.Timer) {
	if !timer.Stop() {
		select {
		case <-timer.C:
		default:
		}
	}
	d := time.Hour
	if o.leading != nil {
		d = max(o.q.opts.Clock.Until(o.q.opts.Clock.FreeAt(o.leading.rec.deadline())), 0)
	}
	timer.Reset(d)
}
