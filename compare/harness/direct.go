package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/go-redsync/redsync/v4"
	rsredis "github.com/go-redsync/redsync/v4/redis"
	"github.com/go-redsync/redsync/v4/redis/goredis/v9"
	"github.com/go-zookeeper/zk"
	goredislib "github.com/redis/go-redis/v9"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/lockd/lockd/backend"
)

// The direct baselines: the best-known client library for each store, used
// the way its documentation shows, on the same server lockd uses in the same
// run. They are only timed (performance scenarios); none of them returns a
// fencing token lockd could compare.

// etcdMutex is etcd's client/v3/concurrency.Mutex: one session (etcd lease)
// per client, like one process per client.
type etcdMutex struct {
	cli  *clientv3.Client
	sess *concurrency.Session
}

func newEtcdMutex(endpoints []string, rt *rtCounter) (Locker, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop(), DialOptions: grpcCounting(rt)})
	if err != nil {
		return nil, err
	}
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(60))
	if err != nil {
		cli.Close()
		return nil, err
	}
	return &etcdMutex{cli: cli, sess: sess}, nil
}

func (e *etcdMutex) Acquire(ctx context.Context, key, _ string, ttl, wait time.Duration) (*Lease, error) {
	sent := time.Now()
	m := concurrency.NewMutex(e.sess, "/compare-direct/"+key)
	if wait <= 0 {
		if err := m.TryLock(ctx); err != nil {
			if errors.Is(err, concurrency.ErrLocked) {
				return nil, fmt.Errorf("%w: %v", backend.ErrHeld, err)
			}
			return nil, err
		}
	} else {
		wctx, cancel := context.WithTimeout(ctx, wait)
		err := m.Lock(wctx)
		cancel()
		if err != nil {
			if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
				return nil, fmt.Errorf("%w: %v", backend.ErrHeld, err)
			}
			return nil, err
		}
	}
	return &Lease{Key: key, Sent: sent, TTL: ttl, handle: m}, nil
}

func (e *etcdMutex) Release(ctx context.Context, l *Lease) error {
	return l.handle.(*concurrency.Mutex).Unlock(ctx)
}

func (e *etcdMutex) Close() error {
	e.sess.Close()
	return e.cli.Close()
}

// zkLock is go-zookeeper's zk.Lock: one ZooKeeper session per client. It has
// no timeout and no context: Acquire waits until granted whatever wait says.
type zkLock struct{ conn *zk.Conn }

func newZKLock(servers []string, rt *rtCounter) (Locker, error) {
	conn, ev, err := zk.Connect(servers, 10*time.Second, zk.WithLogInfo(false), zk.WithLogger(nopLogger{}), zk.WithDialer(zkCountingDialer(rt)))
	if err != nil {
		return nil, err
	}
	if err := waitZKConnected(ev, 15*time.Second); err != nil {
		conn.Close()
		return nil, err
	}
	return &zkLock{conn: conn}, nil
}

func waitZKConnected(ev <-chan zk.Event, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case e := <-ev:
			if e.State == zk.StateHasSession {
				return nil
			}
		case <-t.C:
			return errors.New("zookeeper: no session within " + d.String())
		}
	}
}

type nopLogger struct{}

func (nopLogger) Printf(string, ...any) {}

func (z *zkLock) Acquire(ctx context.Context, key, _ string, ttl, _ time.Duration) (*Lease, error) {
	sent := time.Now()
	l := zk.NewLock(z.conn, "/compare-direct/"+key, zk.WorldACL(zk.PermAll))
	if err := l.Lock(); err != nil {
		return nil, err
	}
	return &Lease{Key: key, Sent: sent, TTL: ttl, handle: l}, nil
}

func (z *zkLock) Release(ctx context.Context, l *Lease) error {
	return l.handle.(*zk.Lock).Unlock()
}

func (z *zkLock) Close() error { z.conn.Close(); return nil }

// redsyncLock is go-redsync/redsync with its defaults (8 s expiry is
// replaced by the workload's TTL; tries and the 50–250 ms random retry delay
// are redsync's own), on one Redis or on several independent masters.
type redsyncLock struct {
	clients []*goredislib.Client
	rs      *redsync.Redsync
}

func newRedsync(addrs []string, rt *rtCounter) (Locker, error) {
	r := &redsyncLock{}
	var pools []rsredis.Pool
	for _, a := range addrs {
		c := goredislib.NewClient(&goredislib.Options{Addr: a})
		if rt != nil {
			c.AddHook(redisHook{c: rt})
		}
		r.clients = append(r.clients, c)
		pools = append(pools, goredis.NewPool(c))
	}
	r.rs = redsync.New(pools...)
	return r, nil
}

func (r *redsyncLock) Acquire(ctx context.Context, key, _ string, ttl, wait time.Duration) (*Lease, error) {
	sent := time.Now()
	opts := []redsync.Option{redsync.WithExpiry(ttl)}
	if wait <= 0 {
		opts = append(opts, redsync.WithTries(1))
	} else {
		// Enough tries to cover the wait at redsync's mean retry delay.
		opts = append(opts, redsync.WithTries(int(math.Max(32, float64(wait/(50*time.Millisecond))))))
	}
	m := r.rs.NewMutex("compare-direct:"+key, opts...)
	lctx := ctx
	if wait > 0 {
		var cancel context.CancelFunc
		lctx, cancel = context.WithTimeout(ctx, wait)
		defer cancel()
	}
	if err := m.LockContext(lctx); err != nil {
		var taken *redsync.ErrTaken
		if errors.As(err, &taken) || errors.Is(err, redsync.ErrFailed) || (ctx.Err() == nil && lctx.Err() != nil) {
			return nil, fmt.Errorf("%w: %v", backend.ErrHeld, err)
		}
		return nil, err
	}
	return &Lease{Key: key, Sent: sent, TTL: ttl, handle: m}, nil
}

func (r *redsyncLock) Release(ctx context.Context, l *Lease) error {
	_, err := l.handle.(*redsync.Mutex).UnlockContext(ctx)
	return err
}

func (r *redsyncLock) Close() error {
	for _, c := range r.clients {
		c.Close()
	}
	return nil
}

// setNXLock is the textbook single-Redis lock: SET key token NX PX ttl, and a
// Lua compare-and-delete to release. It has no queue and no notification, so
// a waiter retries every setNXRetry.
type setNXLock struct{ c *goredislib.Client }

const setNXRetry = 5 * time.Millisecond

var releaseScript = goredislib.NewScript(`if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end`)

func newSetNX(addrs []string, rt *rtCounter) (Locker, error) {
	c := goredislib.NewClient(&goredislib.Options{Addr: addrs[0], PoolSize: 300})
	if rt != nil {
		c.AddHook(redisHook{c: rt})
	}
	return &setNXLock{c: c}, nil
}

func (s *setNXLock) Acquire(ctx context.Context, key, _ string, ttl, wait time.Duration) (*Lease, error) {
	sent := time.Now()
	var b [16]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	deadline := sent.Add(wait)
	for {
		ok, err := s.c.SetNX(ctx, "compare-direct:"+key, id, ttl).Result()
		if err != nil {
			return nil, err
		}
		if ok {
			return &Lease{Key: key, ID: id, Sent: sent, TTL: ttl}, nil
		}
		if !time.Now().Add(setNXRetry).Before(deadline) {
			return nil, fmt.Errorf("%w: SET NX refused", backend.ErrHeld)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(setNXRetry):
		}
	}
}

func (s *setNXLock) Release(ctx context.Context, l *Lease) error {
	return releaseScript.Run(ctx, s.c, []string{"compare-direct:" + l.Key}, l.ID).Err()
}

func (s *setNXLock) Close() error { return s.c.Close() }
