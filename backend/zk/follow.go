package zk

// Following a queue (an election's or a key's) with one-shot watches:
// go-zookeeper has no persistent watches (ZooKeeper 3.6's addWatch is not in
// the client), so each watch is set again, by the read it triggers, once it
// fired. What a watch says is never trusted: every fire, and every timer,
// leads to a fresh read of the queue, from which the caller re-derives the
// state. A watch is set again only once it fired, so none pile up in the
// client while the queue changes often.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

// followOutage is how long a follower keeps trying to read through a
// ZooKeeper outage (a reconnect, a server restart, a new session) before its
// stream ends with ErrUnavailable.
const followOutage = 15 * time.Second

// containerWatch says which watch on the container is set and has not
// fired.
type containerWatch int

const (
	unwatched     containerWatch = iota
	watchChildren                // a child came or went, or the container went
)

// follower reads one queue again after every change.
type follower struct {
	b      *Backend
	kp     string
	outage time.Duration // followOutage; shorter in tests

	cont      <-chan zk.Event
	contArmed containerWatch
	head      <-chan zk.Event
	headArmed string // the node whose data watch is set and has not fired

	// lastCz is the container's czxid in the last view (0: none); changed
	// says a container watch fired since then other than by the
	// container's deletion (a child came or went, it was created, the
	// session lost its watches).
	lastCz  int64
	changed bool
	// reg is our ephemeral node in the container, once made: while it
	// lives ZooKeeper does not reap the container, nor so its data (the
	// term log). It dies with the session; the next read makes another.
	reg string
	sid int64 // the session reg was made in
	// regLost: our node went with a session since the last view, so
	// removals of an unwatched key's holder were not logged meanwhile.
	regLost bool
}

// watcherPrefix starts the name of a follower's node; parseChild takes it
// for a foreign node, so the queue never counts it.
const watcherPrefix = "_w_"

// view is one reading of a queue, made of reads on one session in this
// order, each seeing at least what the one before saw: the children
// (watched), the container's data (the term log), the head's node
// (watched).
type view struct {
	exists bool  // the container
	cz     int64 // the container's czxid: which incarnation of it
	// lost: the container the last view read was removed (ZooKeeper
	// reaps an empty one) after its children changed unseen: what its
	// data said since (an election's term log) is gone.
	lost bool
	// unregistered: our node went with a session since the last view
	// (a lock's removals were not logged meanwhile).
	unregistered bool
	log          termLog // elections only
	q            []child
	head         nodeRead // q[0]'s node, when q is not empty
}

// read makes a view, setting again the watches that fired.
func (f *follower) read(ctx context.Context) (view, error) {
	v, err := f.read1(ctx)
	if err == nil {
		v.lost = f.lastCz != 0 && v.cz != f.lastCz && f.changed
		v.unregistered = f.regLost
		f.lastCz, f.changed, f.regLost = v.cz, false, false
	}
	return v, err
}

func (f *follower) read1(ctx context.Context) (view, error) {
	for attempt := 0; attempt < 50; attempt++ {
		if f.reg != "" && f.b.conn.SessionID() != f.sid {
			// A new session: our node and our watches went with the old
			// one, perhaps with no watch left to say so.
			f.regLost, f.reg, f.changed = true, "", true
			f.cont, f.contArmed, f.head, f.headArmed = nil, unwatched, nil, ""
		}
		names, st, err := f.children(ctx)
		// A container event ZooKeeper sent before answering is in the
		// channel by now (it orders events before later replies): take it
		// in, and read again with the watch set again.
		if f.drain() {
			continue
		}
		if errors.Is(err, zk.ErrNoNode) {
			// The container does not exist (never did, or reaped): make
			// it, to be kept by our node.
			if err := f.b.ensureKey(ctx, f.kp); err != nil {
				return view{}, err
			}
			continue
		}
		if err != nil {
			return view{}, err
		}
		if f.reg == "" {
			sid := f.b.conn.SessionID()
			p, err := call(ctx, func() (string, error) {
				return f.b.conn.Create(f.kp+"/"+watcherPrefix+lease.NewID()[:16], nil, zk.FlagEphemeral, f.b.acl)
			})
			if err != nil && !errors.Is(err, zk.ErrNoNode) {
				return view{}, err
			}
			f.reg, f.sid = p, sid
			continue // read the children again, with our node among them
		}
		v := view{exists: true, cz: st.Czxid, q: parseQueue(names)}
		c, err := f.b.readRaw(ctx, f.kp)
		if errors.Is(err, zk.ErrNoNode) {
			continue
		}
		if err != nil {
			return view{}, err
		}
		v.cz, v.log = c.stat.Czxid, decodeLog(c.raw)
		if len(v.q) == 0 {
			return v, nil
		}
		name := v.q[0].name
		if f.headArmed == name {
			v.head, err = f.b.read(ctx, f.kp+"/"+name)
		} else {
			var ch <-chan zk.Event
			v.head, ch, err = f.b.readW(ctx, f.kp+"/"+name)
			if err == nil {
				f.head, f.headArmed = ch, name
			}
		}
		if errors.Is(err, zk.ErrNoNode) {
			continue // the head went meanwhile: read it all again
		}
		if err != nil {
			return view{}, err
		}
		return v, nil
	}
	return view{}, errors.New("the queue kept changing")
}

func (f *follower) children(ctx context.Context) ([]string, *zk.Stat, error) {
	type res struct {
		names []string
		st    *zk.Stat
		ch    <-chan zk.Event
	}
	if f.contArmed == watchChildren {
		r, err := call(ctx, func() (res, error) {
			names, st, err := f.b.conn.Children(f.kp)
			return res{names, st, nil}, err
		})
		return r.names, r.st, err
	}
	r, err := call(ctx, func() (res, error) {
		names, st, ch, err := f.b.conn.ChildrenW(f.kp)
		return res{names, st, ch}, err
	})
	if err == nil {
		f.cont, f.contArmed = r.ch, watchChildren
	}
	return r.names, r.st, err
}

// wait returns when a watch fires or at (by the backend's clock; zero: no
// timer), or with an error when ctx ends or the backend closes.
func (f *follower) wait(ctx context.Context, at time.Time) error {
	var timer <-chan time.Time
	if !at.IsZero() {
		t := time.NewTimer(max(f.b.clock.Until(at), 0) + time.Millisecond)
		defer t.Stop()
		timer = t.C
	}
	select {
	case ev, ok := <-f.cont:
		f.contFired(ev, ok)
	case ev, ok := <-f.head:
		f.head, f.headArmed = nil, ""
		f.lost(ev, ok)
	case <-timer:
	case <-ctx.Done():
		return ctx.Err()
	case <-f.b.life.Done():
		return fmt.Errorf("%w: zk backend closed", backend.ErrUnavailable)
	}
	return nil
}

// drain takes in a container event already delivered, if any.
func (f *follower) drain() bool {
	select {
	case ev, ok := <-f.cont:
		f.contFired(ev, ok)
		return true
	default:
		return false
	}
}

func (f *follower) contFired(ev zk.Event, ok bool) {
	f.cont, f.contArmed = nil, unwatched
	if !ok || ev.Type != zk.EventNodeDeleted {
		f.changed = true
	}
	f.lost(ev, ok)
}

// lost forgets every watch when the client dropped them all (a session
// expired: go-zookeeper ends each watch with EventNotWatching).
func (f *follower) lost(ev zk.Event, ok bool) {
	if !ok || ev.Type == zk.EventNotWatching {
		f.cont, f.contArmed, f.head, f.headArmed = nil, unwatched, nil, ""
		f.regLost = f.regLost || f.reg != ""
		f.reg = "" // gone with the session
	}
}

// close removes our node, if ZooKeeper answers soon (else it goes with the
// session).
func (f *follower) close() {
	if f.reg == "" {
		return
	}
	ctx, cancel := context.WithTimeout(f.b.life, 5*time.Second)
	defer cancel()
	_ = f.b.delete(ctx, f.reg, -1)
	f.reg = ""
}

// readRetrying is read, tried again while ZooKeeper is out for less than
// followOutage.
func (f *follower) readRetrying(ctx context.Context) (view, error) {
	start := time.Now()
	for {
		rctx, cancel := context.WithTimeout(ctx, f.outage-time.Since(start))
		v, err := f.read(rctx)
		cancel()
		if err == nil {
			return v, nil
		}
		if ctx.Err() != nil {
			return view{}, ctx.Err()
		}
		if time.Since(start)+retryDelay >= f.outage {
			return view{}, fmt.Errorf("zk follow %s: %w: out for %v: %w", f.kp, backend.ErrUnavailable, f.outage, err)
		}
		select {
		case <-time.After(retryDelay):
		case <-ctx.Done():
			return view{}, ctx.Err()
		case <-f.b.life.Done():
			return view{}, fmt.Errorf("%w: zk backend closed", backend.ErrUnavailable)
		}
	}
}

// follow hands first, then a view after every change, to publish, which
// says when to look again without a change (zero: only on a change). It
// returns publish's error, ctx's, or ErrUnavailable (ZooKeeper out for
// followOutage, the backend closed); never nil.
func (f *follower) follow(ctx context.Context, first view, publish func(view) (time.Time, error)) error {
	v := first
	for {
		at, err := publish(v)
		if err != nil {
			return err
		}
		if err := f.wait(ctx, at); err != nil {
			return err
		}
		if v, err = f.readRetrying(ctx); err != nil {
			return err
		}
	}
}
