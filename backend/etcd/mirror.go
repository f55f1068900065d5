package etcd

// A mirror is a copy of one queue (a lock's or an election's), read at one
// revision and kept from a watch that starts right after it. Observing an
// election (observe.go) and watching a lock key (watch.go) both follow one,
// and derive what they send from the whole copy — the head with the lowest
// create revision holding a deadline — never from the last put seen.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockd/lockd/backend"
)

type mirror struct {
	q     *Backend
	name  string           // the lock key or election name
	queue map[string]entry // the entries as of rev
	rev   int64            // the revision the copy is at
	read  int64            // the store's revision when the copy was last read
}

// load reads the whole queue afresh: at revision at, or now when at is 0.
// A revision that etcd compacted away, or has not reached, fails with an
// error historyGone knows.
func (m *mirror) load(ctx context.Context, at int64) error {
	c, cancel := m.q.opCtx(ctx)
	defer cancel()
	opts := []clientv3.OpOption{clientv3.WithPrefix()}
	if at > 0 {
		opts = append(opts, clientv3.WithRev(at))
	}
	resp, err := m.q.cli.Get(c, m.q.queue(m.name), opts...)
	if err != nil {
		if at > 0 && historyGone(err) {
			return err
		}
		return fail(ctx, "read queue", err)
	}
	queue := make(map[string]entry, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		e, err := m.q.decode(kv.Value, string(kv.Key), kv.CreateRevision, kv.ModRevision)
		if err != nil {
			return err
		}
		queue[e.key] = e
	}
	m.queue, m.read, m.rev = queue, resp.Header.Revision, resp.Header.Revision
	if at > 0 {
		m.rev = at
	}
	return nil
}

// head is the entry with the lowest create revision, or nil.
func (m *mirror) head() *entry {
	var h *entry
	for k := range m.queue {
		e := m.queue[k]
		if h == nil || e.createRev < h.createRev {
			h = &e
		}
	}
	return h
}

// holder is the grant the copy shows now: the head, when it holds a deadline
// that is not overdue by this replica's clock. A grant in a session has the
// session's deadline, read now (a session's renewals are no events: the
// timer at the deadline reads it again).
func (m *mirror) holder(ctx context.Context) *entry {
	h := m.head()
	if h != nil && h.rec.S != "" {
		_ = m.q.resolve(ctx, h) // unreadable: the last deadline stands, and the next wake-up reads again
	}
	if h == nil || !h.rec.held() || h.rec.overdue(m.q.opts.Clock) {
		return nil
	}
	return h
}

func (m *mirror) apply(ev *clientv3.Event) error {
	k := string(ev.Kv.Key)
	m.rev = max(m.rev, ev.Kv.ModRevision)
	if ev.Type == clientv3.EventTypeDelete {
		delete(m.queue, k)
		return nil
	}
	e, err := m.q.decode(ev.Kv.Value, k, ev.Kv.CreateRevision, ev.Kv.ModRevision)
	if err != nil {
		return err
	}
	m.queue[k] = e
	return nil
}

// historyGone reports whether a read at a past revision failed because etcd
// does not have it: compacted away, or not reached yet.
func historyGone(err error) bool {
	return compacted(err) || errors.Is(err, rpctypes.ErrFutureRev)
}

// A follower turns a mirror's changes into a stream's events.
type follower interface {
	// step runs after every event applied, and when the timer set by
	// wake fires. It returns ctx's error when the stream must stop, or
	// errReread to have the queue read afresh.
	step(ctx context.Context) error
	// reread runs after the queue was read afresh, the history between
	// the copy and the read being lost (a compaction).
	reread(ctx context.Context) error
	// wake is how long until step must run with no event; ok false: no
	// timer.
	wake() (d time.Duration, ok bool)
}

// errReread is a follower asking for the queue to be read afresh.
var errReread = errors.New("read the queue afresh")

// follow keeps m from a watch from m.rev+1, telling f, until ctx ends or the
// watch cannot go on; it returns why (ctx's error, or ErrUnavailable).
func (m *mirror) follow(ctx context.Context, f follower) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		err := m.watch(ctx, f, timer)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case m.q.life.Err() != nil:
			return fmt.Errorf("%w: etcd backend closed", backend.ErrUnavailable)
		case err == nil:
			continue // the watch was cut: go on from m.rev+1
		case !compacted(err) && !errors.Is(err, errReread):
			return fmt.Errorf("%w: etcd watch: %v", backend.ErrUnavailable, err)
		}
		// Compacted past our revision: the history in between is gone.
		if err := m.load(ctx, 0); err != nil {
			return err
		}
		if err := f.reread(ctx); err != nil {
			return err
		}
	}
}

// watch follows the queue from m.rev+1 until the watch fails (its error, nil
// when it just closed), f asks to stop, or ctx ends.
func (m *mirror) watch(ctx context.Context, f follower, timer *time.Timer) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	// Right after a read at the current revision, etcd serves this at
	// once, not on the 100 ms unsynced path of a past revision.
	wch := m.q.cli.Watch(wctx, m.q.queue(m.name), clientv3.WithPrefix(), clientv3.WithRev(m.rev+1))
	for {
		arm(timer, f)
		select {
		case resp, ok := <-wch:
			if !ok {
				return nil
			}
			if err := resp.Err(); err != nil {
				return err
			}
			for _, ev := range resp.Events {
				if err := m.apply(ev); err != nil {
					return err
				}
				// One event at a time: a release followed by the
				// next grant is two changes.
				if err := f.step(ctx); err != nil {
					return err
				}
			}
		case <-timer.C:
			if err := f.step(ctx); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		case <-m.q.life.Done():
			return nil
		}
	}
}

func arm(timer *time.Timer, f follower) {
	if !timer.Stop() {
		select {
		case <-timer.C:
		default:
		}
	}
	d, ok := f.wake()
	if !ok {
		d = time.Hour
	}
	timer.Reset(max(d, 0))
}
