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
// acquire there reads before it writes. A hint for speed only: every
// decision is made by etcd. Bounded: it forgets everything at 4,096 keys.
type busyKeys struct {
	mu    sync.Mutex
	until map[string]time.Time
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
	t, ok := k.until[key]
	if ok && now.After(t) {
		delete(k.until, key)
		return false
	}
	return ok
}
