package harness

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/go-zookeeper/zk"
	goredislib "github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
)

// rtCounter counts requests a client sends to its store, seen from inside
// the real client: a gRPC interceptor for etcd, a go-redis hook, a counting
// net.Conn for ZooKeeper. A nil counter counts nothing.
type rtCounter struct{ n, w atomic.Int64 }

func (c *rtCounter) add(d int64) {
	if c != nil {
		c.n.Add(d)
	}
}

// addWrite counts a request that writes (storewrites.go), beside add.
func (c *rtCounter) addWrite() {
	if c != nil {
		c.w.Add(1)
	}
}

// writes is how many of the requests counted wrote (where the client can
// tell; every request on Redis).
func (c *rtCounter) writes() int64 {
	if c == nil {
		return 0
	}
	return c.w.Load()
}

func (c *rtCounter) load() int64 {
	if c == nil {
		return 0
	}
	return c.n.Load()
}

// grpcCounting counts every unary call and every message sent on a stream
// (a watch or a lease keep-alive request is one message each).
func grpcCounting(c *rtCounter) []grpc.DialOption {
	if c == nil {
		return nil
	}
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			c.add(1)
			if etcdWrites(method) {
				c.addWrite()
			}
			return invoker(ctx, method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			s, err := streamer(ctx, desc, cc, method, opts...)
			if err != nil {
				return nil, err
			}
			return countingStream{ClientStream: s, c: c}, nil
		}),
	}
}

type countingStream struct {
	grpc.ClientStream
	c *rtCounter
}

func (s countingStream) SendMsg(m any) error {
	s.c.add(1)
	return s.ClientStream.SendMsg(m)
}

// redisHook counts each command, and each pipeline (or Lua script call) as
// one round trip.
type redisHook struct{ c *rtCounter }

func (h redisHook) DialHook(next goredislib.DialHook) goredislib.DialHook { return next }

func (h redisHook) ProcessHook(next goredislib.ProcessHook) goredislib.ProcessHook {
	return func(ctx context.Context, cmd goredislib.Cmder) error {
		h.c.add(1)
		h.c.addWrite()
		return next(ctx, cmd)
	}
}

func (h redisHook) ProcessPipelineHook(next goredislib.ProcessPipelineHook) goredislib.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredislib.Cmder) error {
		h.c.add(1)
		h.c.addWrite()
		return next(ctx, cmds)
	}
}

// zkCountingDialer counts writes on the ZooKeeper connection: go-zookeeper
// writes each request (and each session ping) with one Write.
func zkCountingDialer(c *rtCounter) zk.Dialer {
	return func(network, address string, timeout time.Duration) (net.Conn, error) {
		conn, err := net.DialTimeout(network, address, timeout)
		if err != nil || c == nil {
			return conn, err
		}
		return &countingConn{Conn: conn, c: c}, nil
	}
}

type countingConn struct {
	net.Conn
	c *rtCounter
}

func (cc *countingConn) Write(p []byte) (int, error) {
	cc.c.add(1)
	if zkWrites(p) {
		cc.c.addWrite()
	}
	return cc.Conn.Write(p)
}

// RoundTripCell: store requests per uncontended acquire and per release.
type RoundTripCell struct {
	Via        string  `json:"via"`
	Samples    int     `json:"samples"`
	PerAcquire float64 `json:"requests_per_acquire"`
	PerRelease float64 `json:"requests_per_release"`
	Counted    string  `json:"counted_by"`
	Unmeasured string  `json:"unmeasured,omitempty"`
}

// measureRoundTrips does n uncontended acquire+release pairs and divides
// the requests the counter saw. Background traffic (session pings, lease
// keep-alives) in the window is counted too; n is large enough to make it
// small, and the report says so.
func measureRoundTrips(ctx context.Context, l Locker, c *rtCounter, n int) (acq, rel float64, err error) {
	key := fmt.Sprintf("compare-rt-%d", time.Now().UnixNano())
	// One warm-up pair creates whatever parents and sessions a first use
	// needs.
	if lease, err := l.Acquire(ctx, key, "rt", 10*time.Second, 0); err == nil {
		_ = l.Release(ctx, lease)
	}
	var a, r int64
	for i := 0; i < n; i++ {
		before := c.load()
		lease, err := l.Acquire(ctx, key, "rt", 10*time.Second, 0)
		if err != nil {
			return 0, 0, err
		}
		mid := c.load()
		if err := l.Release(ctx, lease); err != nil {
			return 0, 0, err
		}
		a += mid - before
		r += c.load() - mid
	}
	return float64(a) / float64(n), float64(r) / float64(n), nil
}
