package etcd

// How round trips to etcd are let through under contention.

import (
	"context"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockd/lockd/backend"
)

// admission is how a round trip to etcd is let through (see slot): the work
// of an acquirer that found its key held is contended until the end of its
// wait; everything else goes at once.
type admission struct {
	contended bool
	until     time.Time
}

// atOnce admits without a slot: a holder's renew and release, an inspect,
// the first try of an acquire.
var atOnce = admission{}

// contended admits the work of an acquirer that found its key held and may
// go on until `until` (the end of its wait).
func contended(until time.Time) admission { return admission{contended: true, until: until} }

// slot waits for one of Options.MaxContendedOps slots when adm is
// contended, and returns its release; otherwise it returns at once. A burst
// of thousands of acquirers on held keys so lines up in lockd, instead of
// in etcd, where each operation would wait behind all the others until it
// timed out. A holder's renew and release, and the first try of an acquire,
// never wait for a slot. Past the end of its wait plus OpTimeout an
// acquirer gives up with ErrUnavailable: etcd is not keeping up.
func (b *Backend) slot(ctx context.Context, adm admission) (release func(), err error) {
	if !adm.contended {
		return func() {}, nil
	}
	select {
	case b.slots <- struct{}{}:
		return func() { <-b.slots }, nil
	default:
	}
	t := time.NewTimer(max(time.Until(adm.until), 0) + b.opts.OpTimeout)
	defer t.Stop()
	select {
	case b.slots <- struct{}{}:
		return func() { <-b.slots }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return nil, fmt.Errorf("%w: etcd: more acquirers of held keys than it keeps up with (%d at a time)", backend.ErrUnavailable, cap(b.slots))
	}
}

func (b *Backend) txn(ctx context.Context, adm admission, op string, cmps []clientv3.Cmp, then, els []clientv3.Op) (*clientv3.TxnResponse, error) {
	release, err := b.slot(ctx, adm)
	if err != nil {
		return nil, err
	}
	defer release()
	c, cancel := b.opCtx(ctx)
	defer cancel()
	resp, err := b.cli.Txn(c).If(cmps...).Then(then...).Else(els...).Commit()
	if err != nil {
		return nil, fail(ctx, op, err)
	}
	return resp, nil
}

// busyKeys remembers the keys this instance lately found held, so that an
// acquire there queues without trying the write that takes a free key. A
// hint for speed only: every decision is made by etcd. Bounded: it forgets
// everything at 4,096 keys.
//
// It also knows the keys whose first try is in flight: an acquirer of such
// a key waits for that try's answer instead of sending one more. Without
// that, a burst (50,000 long polls over 1,000 held keys) sends one write
// each before the first reply marks their key busy; etcd applies them one
// after another, and those still unanswered at OpTimeout fail.
type busyKeys struct {
	mu       sync.Mutex
	until    map[string]time.Time
	inFlight map[string]chan struct{} // closed when the key's first try ends
}

// firstTry reports whether an acquire of key should try the write that
// takes a free key: the key was not lately found held, and no other first
// try of it is in flight (one that is, is waited for, or ctx). When true,
// the caller must call end once the try's answer is in (after mark, if
// the key was held).
func (k *busyKeys) firstTry(ctx context.Context, key string) (end func(), try bool, err error) {
	for {
		k.mu.Lock()
		if k.recentLocked(key, time.Now()) {
			k.mu.Unlock()
			return nil, false, nil
		}
		ch, ok := k.inFlight[key]
		if !ok {
			if k.inFlight == nil {
				k.inFlight = map[string]chan struct{}{}
			}
			ch = make(chan struct{})
			k.inFlight[key] = ch
			k.mu.Unlock()
			return func() {
				k.mu.Lock()
				delete(k.inFlight, key)
				k.mu.Unlock()
				close(ch)
			}, true, nil
		}
		k.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
	}
}

const busyFor = 10 * time.Second

func (k *busyKeys) mark(key string, now time.Time) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.until == nil || len(k.until) >= 4096 {
		k.until = map[string]time.Time{}
	}
	k.until[key] = now.Add(busyFor)
}

func (k *busyKeys) recent(key string, now time.Time) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.recentLocked(key, now)
}

func (k *busyKeys) recentLocked(key string, now time.Time) bool {
	t, ok := k.until[key]
	if ok && now.After(t) {
		delete(k.until, key)
		return false
	}
	return ok
}
