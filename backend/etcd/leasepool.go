package etcd

import (
	"context"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// gcMargin is how long an entry's etcd lease outlives the grant's deadline
// at least; bucket is how many seconds of deadlines share one lease (at most
// that much longer an expired entry waits for etcd to collect it).
const (
	gcMargin = 2 * time.Second
	bucket   = 10 * time.Second
)

// leasePool hands out etcd leases that outlive a given deadline by at least
// gcMargin. Entries whose collection falls due in the same bucket share one
// lease, so a busy lockd grants about one etcd lease per bucket and TTL
// instead of one per acquire, and a handoff rarely waits for a lease grant.
type leasePool struct {
	cli *clientv3.Client
	mu  sync.Mutex
	by  map[int64]*pooled // unix second the lease outlives → lease
}

// pooled is one lease, or the grant of it in flight: ready closes when id
// or err is set, so that a burst of acquires grants one lease, not one each.
type pooled struct {
	ready chan struct{}
	id    clientv3.LeaseID
	err   error
}

func newLeasePool(cli *clientv3.Client) *leasePool {
	return &leasePool{cli: cli, by: map[int64]*pooled{}}
}

// get returns a lease that lasts until at least deadline + gcMargin.
func (p *leasePool) get(ctx context.Context, opTimeout time.Duration, deadline time.Time) (clientv3.LeaseID, error) {
	due := deadline.Add(gcMargin).Add(bucket - 1).Truncate(bucket).Unix()
	p.mu.Lock()
	e, ok := p.by[due]
	if !ok {
		now := time.Now().Unix()
		for s, old := range p.by {
			if s < now {
				select {
				case <-old.ready:
					delete(p.by, s)
				default: // still being granted: its waiters need it
				}
			}
		}
		e = &pooled{ready: make(chan struct{})}
		p.by[due] = e
	}
	p.mu.Unlock()
	if ok {
		select {
		case <-e.ready:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		if e.err == nil {
			return e.id, nil
		}
		// The grant failed for whoever made it: try once more ourselves.
		return p.grant(ctx, opTimeout, due, nil)
	}
	return p.grant(ctx, opTimeout, due, e)
}

// grant asks etcd for a lease lasting until due and, when e is given,
// publishes the result to the callers waiting on it.
func (p *leasePool) grant(ctx context.Context, opTimeout time.Duration, due int64, e *pooled) (clientv3.LeaseID, error) {
	// The lease's TTL starts when etcd grants it, after this moment, so
	// counting from now is conservative.
	ttl := due - time.Now().Unix() + 1
	c, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	g, err := p.cli.Grant(c, ttl)
	if err != nil {
		err = fail(ctx, "grant lease", err)
	}
	if e != nil {
		if err == nil {
			e.id = g.ID
		} else {
			e.err = err
			p.mu.Lock()
			if p.by[due] == e {
				delete(p.by, due) // let the next caller try again
			}
			p.mu.Unlock()
		}
		close(e.ready)
	}
	if err != nil {
		return 0, err
	}
	return g.ID, nil
}
