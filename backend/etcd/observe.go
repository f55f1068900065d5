package etcd

// Observing an election: a mirror of its queue (mirror.go) and a timer at
// the leader's deadline plus the declared skew. The leader is always
// re-derived from the whole queue, never taken from the last put seen.

import (
	"context"
	"time"

	"github.com/lockd/lockd/backend"
)

// Observe implements backend.Elections.
func (el elections) Observe(ctx context.Context, name string) (<-chan backend.ElectionEvent, error) {
	o := &observer{m: mirror{q: el.q, name: name}, out: make(chan backend.ElectionEvent, 16)}
	if err := o.m.load(ctx, 0); err != nil {
		return nil, err
	}
	go o.run(ctx)
	return o.out, nil
}

type observer struct {
	m   mirror
	out chan backend.ElectionEvent

	leading *entry // the leader last sent; nil when none
	maxTerm uint64 // the highest term sent: terms only increase
	started bool
}

// publish sends what changed since the last event, if anything. It returns
// ctx's error when ctx ended while sending.
func (o *observer) publish(ctx context.Context) error {
	clock := o.m.q.opts.Clock
	now := o.m.holder(ctx)
	if !o.started {
		o.started = true
		if now == nil {
			nl := &backend.NoLeader{}
			if h := o.m.head(); h != nil && h.rec.held() {
				nl = &backend.NoLeader{LastTerm: uint64(h.createRev), Reason: backend.ReasonExpired}
				o.maxTerm = nl.LastTerm
			}
			return o.send(ctx, backend.ElectionEvent{NoLeader: nl})
		}
	}
	if o.leading != nil && (now == nil || now.createRev != o.leading.createRev) {
		// The term ended: by its deadline, or before it (a resign).
		reason := backend.ReasonResigned
		if !clock.Valid(o.leading.rec.deadline()) {
			reason = backend.ReasonExpired
		}
		ended := uint64(o.leading.createRev)
		o.leading = nil
		if err := o.send(ctx, backend.ElectionEvent{NoLeader: &backend.NoLeader{LastTerm: ended, Reason: reason}}); err != nil {
			return err
		}
	}
	if now == nil {
		return nil
	}
	if o.leading == nil && uint64(now.createRev) <= o.maxTerm {
		return nil // a term already ended on this stream never comes back
	}
	changed := o.leading == nil || o.leading.rec.Value != now.rec.Value
	o.leading = now // keeps the latest deadline, for the timer and the reason
	o.maxTerm = uint64(now.createRev)
	if !changed {
		return nil
	}
	return o.send(ctx, backend.ElectionEvent{Leader: now.leader()})
}

func (o *observer) send(ctx context.Context, ev backend.ElectionEvent) error {
	select {
	case o.out <- ev:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// step, reread and wake make the observer a follower of its mirror. After
// a compaction the observer sends what changed between the two copies.
func (o *observer) step(ctx context.Context) error   { return o.publish(ctx) }
func (o *observer) reread(ctx context.Context) error { return o.publish(ctx) }

// wake is the moment the current leader's grant may be removed (its deadline
// plus the declared skew, by this replica's clock).
func (o *observer) wake() (time.Duration, bool) {
	if o.leading == nil {
		return 0, false
	}
	c := o.m.q.opts.Clock
	return c.Until(c.FreeAt(o.leading.rec.deadline())), true
}

func (o *observer) run(ctx context.Context) {
	err := o.publish(ctx)
	if err == nil {
		err = o.m.follow(ctx, o)
	}
	// The stream's last event carries why it ended.
	select {
	case o.out <- backend.ElectionEvent{Err: err}:
	case <-time.After(time.Second): // nobody reads any more
	}
	close(o.out)
}
