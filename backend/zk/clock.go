package zk

import (
	"context"
	"errors"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/lockd/lockd/backend"
)

// clockNode is the node whose writes ClockOffset times. Its name starts with
// '_', which no lock key does, so it is never taken for a key.
const clockNode = "/_clock"

// ClockOffset implements backend.ClockChecker: one setData on a node under
// Root, whose mtime ZooKeeper's leader stamps with its own clock when it
// orders the write. The stamp was made between this replica's send and the
// reply, so the offset is known to within half the round trip (plus the
// stamp's millisecond).
func (b *Backend) ClockOffset(ctx context.Context) (backend.ClockReading, error) {
	p := b.root + clockNode
	for attempt := 0; ; attempt++ {
		sent := b.clock.Now()
		st, err := call(ctx, func() (*zk.Stat, error) { return b.conn.Set(p, nil, -1) })
		got := b.clock.Now()
		if errors.Is(err, zk.ErrNoNode) && attempt == 0 {
			if _, err := b.ensureRoot(ctx); err != nil {
				return backend.ClockReading{}, unavailable("clock", err)
			}
			_, err := call(ctx, func() (string, error) { return b.conn.Create(p, nil, zk.FlagPersistent, b.acl) })
			if err != nil && !errors.Is(err, zk.ErrNodeExists) {
				return backend.ClockReading{}, unavailable("clock", err)
			}
			continue
		}
		if err != nil {
			return backend.ClockReading{}, unavailable("clock", err)
		}
		rtt := got.Sub(sent)
		mid := sent.Add(rtt / 2)
		return backend.ClockReading{
			Offset:      mid.Sub(time.UnixMilli(st.Mtime)),
			Uncertainty: rtt/2 + time.Millisecond,
			Reference:   "ZooKeeper leader's clock (mtime of a write)",
		}, nil
	}
}

var _ backend.ClockChecker = (*Backend)(nil)
