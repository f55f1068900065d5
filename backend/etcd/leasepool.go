package etcd

import (
	"context"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// gcMargin is how long an entry's etcd lease outlives the grant's deadline.
const gcMargin = 2 * time.Second

// leasePool hands out etcd leases that outlive a given deadline by at least
// gcMargin. Entries whose collection falls due in the same second share one
// lease, so a busy lockd grants about one etcd lease a second instead of one
// per acquire.
type leasePool struct {
	cli *clientv3.Client
	mu  sync.Mutex
	by  map[int64]clientv3.LeaseID // unix second the lease outlives → lease
}

func newLeasePool(cli *clientv3.Client) *leasePool {
	return &leasePool{cli: cli, by: map[int64]clientv3.LeaseID{}}
}

// get returns a lease that lasts until at least deadline + gcMargin.
func (p *leasePool) get(ctx context.Context, opTimeout time.Duration, deadline time.Time) (clientv3.LeaseID, error) {
	due := deadline.Add(gcMargin).Add(time.Second - 1).Truncate(time.Second).Unix()
	p.mu.Lock()
	id, ok := p.by[due]
	p.mu.Unlock()
	if ok {
		return id, nil
	}
	// The lease's TTL starts when etcd grants it, after this moment, so
	// counting from now is conservative.
	ttl := due - time.Now().Unix() + 1
	c, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	g, err := p.cli.Grant(c, ttl)
	if err != nil {
		return 0, fail(ctx, "grant lease", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if other, ok := p.by[due]; ok {
		// Another acquire granted one for the same second meanwhile; the
		// spare lease holds nothing and simply runs out.
		return other, nil
	}
	now := time.Now().Unix()
	for s := range p.by {
		if s < now {
			delete(p.by, s)
		}
	}
	p.by[due] = g.ID
	return g.ID, nil
}
