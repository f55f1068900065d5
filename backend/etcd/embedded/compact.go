package embedded

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/storage/mvcc"
)

// Every acquire writes a new key and every release deletes it. etcd keeps
// each deleted key in its index, and every revision in its database, until
// the history is compacted: without compaction the range reads of an
// acquire walk every key the lock ever had, and the database grows until
// etcd's quota stops all writes (NOSPACE). lockd reads history only to
// resume a key's event stream, which resyncs once its cursor is compacted
// away, so a short one is enough.

// Defaults of CompactOptions. A lock that is taken and released over and
// over has about Retain/2 to Retain deleted keys left in its range; their
// walk costs less than the rest of an acquire (see BenchmarkHistory).
const (
	DefaultCompactEvery  = 100 * time.Millisecond
	DefaultCompactRetain = 500
)

// CompactOptions configures a Compactor. The zero value works.
type CompactOptions struct {
	// Every is how often the compactor reads the store's revision; default
	// 100 ms.
	Every time.Duration
	// Retain is how many revisions of history are kept behind the current
	// one, at least; default 500. A compaction is made once Retain more
	// revisions were written since the last one, so between Retain and
	// twice Retain revisions (plus the writes of one Every) are kept, and
	// an idle store is not compacted at all.
	Retain int64
	// Logger is told when compactions start failing, and when they work
	// again; default: nobody.
	Logger *slog.Logger
}

// Compactor compacts an etcd cluster's history to its current revision
// minus Retain, looking every Every. Compaction is cluster-wide: it drops the
// history of every key, not only lockd's. A compaction that another client
// made first (another lockd replica, etcd's own auto-compaction) is fine.
type Compactor struct {
	rev     func(ctx context.Context) (int64, error)
	compact func(ctx context.Context, rev int64) error
	opts    CompactOptions

	cancel context.CancelFunc
	done   chan struct{}

	mu   sync.Mutex
	last int64 // the revision last compacted to; 0 before the first
}

// StartCompactor compacts the cluster cli talks to. It learns the current
// revision from a count-only read of key, which cli's user must be allowed
// to read (lockd reads its prefix's ping key). Close stops it; it does not
// close cli.
func StartCompactor(cli *clientv3.Client, key string, opts CompactOptions) *Compactor {
	return startCompactor(
		func(ctx context.Context) (int64, error) {
			r, err := cli.Get(ctx, key, clientv3.WithCountOnly())
			if err != nil {
				return 0, err
			}
			return r.Header.Revision, nil
		},
		func(ctx context.Context, rev int64) error {
			_, err := cli.Compact(ctx, rev)
			return err
		},
		opts)
}

func startCompactor(rev func(context.Context) (int64, error), compact func(context.Context, int64) error, opts CompactOptions) *Compactor {
	if opts.Every <= 0 {
		opts.Every = DefaultCompactEvery
	}
	if opts.Retain <= 0 {
		opts.Retain = DefaultCompactRetain
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Compactor{rev: rev, compact: compact, opts: opts, cancel: cancel, done: make(chan struct{})}
	go c.run(ctx)
	return c
}

func (c *Compactor) run(ctx context.Context) {
	defer close(c.done)
	t := time.NewTicker(c.opts.Every)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := c.once(ctx)
		if ctx.Err() != nil || c.opts.Logger == nil || (err != nil) == failing {
			continue
		}
		// Said once per change, not at every look.
		if failing = err != nil; failing {
			c.opts.Logger.Warn("etcd compaction failing; the history grows until it works again", "err", err)
		} else {
			c.opts.Logger.Info("etcd compaction works again")
		}
	}
}

// once compacts to the current revision minus Retain, when that is at
// least Retain past the last compaction.
func (c *Compactor) once(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, max(c.opts.Every, 5*time.Second))
	defer cancel()
	rev, err := c.rev(ctx)
	if err != nil {
		return fmt.Errorf("read revision: %w", err)
	}
	target := rev - c.opts.Retain
	c.mu.Lock()
	last := c.last
	c.mu.Unlock()
	if target < last+c.opts.Retain {
		return nil
	}
	if err := c.compact(ctx, target); err != nil && !errors.Is(err, rpctypes.ErrCompacted) && !errors.Is(err, mvcc.ErrCompacted) {
		return fmt.Errorf("compact to revision %d: %w", target, err)
	}
	c.mu.Lock()
	c.last = target
	c.mu.Unlock()
	return nil
}

// Compacted returns the revision last compacted to (0 before the first).
func (c *Compactor) Compacted() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// Close stops the compactor and waits for a compaction in flight.
func (c *Compactor) Close() {
	c.cancel()
	<-c.done
}
