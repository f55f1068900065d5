package zk

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/go-zookeeper/zk"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/backend/backendtest"
	"github.com/lockd/lockd/internal/lease"
	"github.com/lockd/lockd/internal/testserver"
)

// ZooKeeper's JVM takes a second or two to start: one standalone server and
// one ensemble serve every test that does not kill members.
var shared struct {
	mu       sync.Mutex
	servers  map[int]*testserver.ZK
	failures map[int]error
}

func TestMain(m *testing.M) {
	code := m.Run()
	shared.mu.Lock()
	for _, z := range shared.servers {
		z.Close()
	}
	shared.mu.Unlock()
	os.Exit(code)
}

// requireZK skips (or fails, in CI) when ZooKeeper is not installed.
func requireZK(t testing.TB) {
	t.Helper()
	if !testserver.ZooKeeperAvailable() {
		testserver.Missing(t, testserver.ErrZooKeeperMissing.Error())
	}
}

// sharedZK returns the shared server (n == 1) or ensemble (n == 3).
func sharedZK(t testing.TB, n int) *testserver.ZK {
	t.Helper()
	requireZK(t)
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.servers == nil {
		shared.servers, shared.failures = map[int]*testserver.ZK{}, map[int]error{}
	}
	if z := shared.servers[n]; z != nil {
		return z
	}
	if err := shared.failures[n]; err != nil {
		t.Fatalf("start ZooKeeper (%d members): %v", n, err)
	}
	z, err := testserver.StartZooKeeper(n)
	if err != nil {
		shared.failures[n] = err
		t.Fatalf("start ZooKeeper (%d members): %v", n, err)
	}
	shared.servers[n] = z
	return z
}

const sessionTimeout = 10 * time.Second

func dial(t testing.TB, addrs []string, opts ...func(*zk.Conn)) *zk.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var (
		conn *zk.Conn
		err  error
	)
	if len(opts) == 0 {
		conn, err = Dial(ctx, addrs, sessionTimeout)
	} else {
		conn, err = dialWith(ctx, addrs, opts...)
	}
	if err != nil {
		t.Fatalf("Dial %v: %v", addrs, err)
	}
	return conn
}

// dialWith is Dial with extra client options (a fault-injecting dialer).
func dialWith(ctx context.Context, addrs []string, opts ...func(*zk.Conn)) (*zk.Conn, error) {
	return dialSession(ctx, addrs, sessionTimeout, opts...)
}

func dialSession(ctx context.Context, addrs []string, timeout time.Duration, opts ...func(*zk.Conn)) (*zk.Conn, error) {
	zopts := []func(*zk.Conn){zk.WithLogInfo(false)}
	zopts = append(zopts, opts...)
	conn, events, err := zk.Connect(addrs, timeout, func(c *zk.Conn) {
		for _, o := range zopts {
			o(c)
		}
	})
	if err != nil {
		return nil, err
	}
	for conn.State() != zk.StateHasSession {
		select {
		case <-events:
		case <-ctx.Done():
			conn.Close()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return conn, nil
}

func newBackend(t testing.TB, addrs []string, opts Options) *Backend {
	t.Helper()
	b := New(dial(t, addrs), opts)
	t.Cleanup(func() { b.Close() })
	return b
}

func factory(addrs []string, opts Options) backendtest.Factory {
	return func(t *testing.T) backend.Backend { return newBackend(t, addrs, opts) }
}

// clocked is the conformance suite's options for this backend: what it
// cannot do yet, and Clocked, an instance made by newB with opts and the
// given clock.
func clocked(newB func(*testing.T, Options) backend.Backend, opts Options) backendtest.Options {
	return backendtest.Options{NoEventReplay: "ZooKeeper keeps no history of a key: a stream resumes only while the same grant holds", NoRWLocks: "not built yet", NoSemaphores: "not built yet", NoLockDelay: backendtest.NoLockDelays("not built yet"), Clocked: func(t *testing.T, c lease.Clock) backend.Backend {
		o := opts
		o.Clock = c
		return newB(t, o)
	}}
}

func TestConformanceStandalone(t *testing.T) {
	z := sharedZK(t, 1)
	backendtest.Run(t, factory(z.Addrs(), Options{}), clocked(func(t *testing.T, o Options) backend.Backend { return newBackend(t, z.Addrs(), o) }, Options{}))
}

func TestConformanceEnsemble(t *testing.T) {
	z := sharedZK(t, 3)
	opts := Options{Root: "/lockd-ensemble"}
	backendtest.Run(t, factory(z.Addrs(), opts), clocked(func(t *testing.T, o Options) backend.Backend { return newBackend(t, z.Addrs(), o) }, opts))
}

func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// uniqueKey makes a valid key ([A-Za-z0-9._:-]) from the test's name.
func uniqueKey(t testing.TB) string {
	return strings.NewReplacer("/", ".", "#", "-").Replace(t.Name()) + "-" + lease.NewID()[:8]
}

// One release wakes exactly one of 50 waiters: each watches only its
// predecessor, and the handoff does not touch the node the next waiter
// watches.
func TestOneReleaseWakesOneWaiter(t *testing.T) {
	z := sharedZK(t, 1)
	holderB := newBackend(t, z.Addrs(), Options{})
	waiters := newBackend(t, z.Addrs(), Options{})
	key := uniqueKey(t)
	g, err := holderB.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, TTL: time.Minute})
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	const n = 50
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	granted := make(chan backend.Grant, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w, err := waiters.Acquire(ctx, backend.AcquireRequest{Key: key, TTL: time.Minute, Wait: time.Minute})
			if err == nil {
				granted <- w
			}
		}()
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := holderB.Inspect(ctxFor(t, 10*time.Second), key)
		if err != nil {
			t.Fatalf("Inspect: %v", err)
		}
		if st.Waiters == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d waiters queued, want %d", st.Waiters, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // every waiter has set its watch
	before := waiters.wakes.Load()
	if err := holderB.Release(ctxFor(t, 10*time.Second), key, g.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	var next backend.Grant
	select {
	case next = <-granted:
	case <-time.After(10 * time.Second):
		t.Fatalf("no waiter granted 10s after the release")
	}
	time.Sleep(500 * time.Millisecond) // let any herd show itself
	if woken := waiters.wakes.Load() - before; woken != 1 {
		t.Errorf("one release woke %d waiters, want exactly 1", woken)
	}
	if extra := len(granted); extra != 0 {
		t.Errorf("%d more waiters granted after one release, want 0", extra)
	}
	if next.Token <= g.Token {
		t.Errorf("token %d after %d, want greater", next.Token, g.Token)
	}
	st, err := holderB.Inspect(ctxFor(t, 10*time.Second), key)
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	if !st.Held || st.Holder.Token != next.Token || st.Waiters != n-1 {
		t.Errorf("after one handoff Inspect = held %v holder %+v waiters %d, want held by token %d with %d waiters", st.Held, st.Holder, st.Waiters, next.Token, n-1)
	}
	cancel()
	wg.Wait()
	if err := waiters.Release(ctxFor(t, 10*time.Second), key, next.LeaseID); err != nil {
		t.Errorf("Release: %v", err)
	}
}

// critical is a register that the holders of one lock write to: it notices
// two holders at once and a token lower than one it already accepted.
type critical struct {
	mu       sync.Mutex
	inside   int
	maxToken uint64
	grants   int
	problems []string
	last     time.Time     // of the latest grant
	maxGap   time.Duration // longest time between two grants
}

func (c *critical) enter(g backend.Grant) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inside++
	c.grants++
	if now := time.Now(); !c.last.IsZero() {
		c.maxGap = max(c.maxGap, now.Sub(c.last))
		c.last = now
	} else {
		c.last = now
	}
	if c.inside != 1 {
		c.problems = append(c.problems, fmt.Sprintf("%d holders at once (token %d)", c.inside, g.Token))
	}
	if g.Token <= c.maxToken {
		c.problems = append(c.problems, fmt.Sprintf("token %d granted after token %d", g.Token, c.maxToken))
	}
	c.maxToken = g.Token
}

func (c *critical) leave() {
	c.mu.Lock()
	c.inside--
	c.mu.Unlock()
}

func (c *critical) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.grants
}

// contend runs workers that take the lock, write the register, and release,
// until stop closes. ZooKeeper being briefly unreachable is expected; every
// other error is reported.
func contend(t *testing.T, bs []*Backend, key string, reg *critical, stop <-chan struct{}) (wait func() (unavailable int)) {
	var (
		wg    sync.WaitGroup
		unav  atomic.Int64
		mu    sync.Mutex
		other []error
	)
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func(b *Backend) {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				g, err := b.Acquire(ctx, backend.AcquireRequest{Key: key, TTL: 15 * time.Second, Wait: 20 * time.Second})
				cancel()
				if errors.Is(err, backend.ErrUnavailable) || errors.Is(err, backend.ErrHeld) {
					unav.Add(1)
					time.Sleep(50 * time.Millisecond)
					continue
				}
				if err != nil {
					mu.Lock()
					other = append(other, err)
					mu.Unlock()
					return
				}
				reg.enter(g)
				time.Sleep(2 * time.Millisecond)
				reg.leave()
				// Releasing may have to wait for the client to reconnect;
				// a release that fails leaves the lease to run out, which
				// is also safe (the register sees any overlap).
				for i := 0; i < 50; i++ {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					err = b.Release(ctx, key, g.LeaseID)
					cancel()
					if !errors.Is(err, backend.ErrUnavailable) {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
				if err != nil && !errors.Is(err, backend.ErrLeaseExpired) {
					mu.Lock()
					other = append(other, fmt.Errorf("release: %w", err))
					mu.Unlock()
				}
			}
		}(bs[w%len(bs)])
	}
	return func() int {
		wg.Wait()
		for _, err := range other {
			t.Errorf("worker: %v", err)
		}
		return int(unav.Load())
	}
}

// Killing an ensemble member (the leader, the worst case) while clients
// contend: service continues, and the register never sees two holders or a
// token going backwards.
func TestKillEnsembleMemberWhileContending(t *testing.T) {
	requireZK(t)
	z := testserver.ZooKeeper(t, 3)
	bs := []*Backend{newBackend(t, z.Addrs(), Options{}), newBackend(t, z.Addrs(), Options{})}
	key := uniqueKey(t)
	reg := &critical{}
	stop := make(chan struct{})
	wait := contend(t, bs, key, reg, stop)

	// Let the service warm up: a cold ensemble on a busy machine may take a
	// while for its first grants.
	started := time.Now()
	for reg.count() < 10 && time.Since(started) < 30*time.Second {
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("%d grants in the first %v", reg.count(), time.Since(started))
	beforeKill := reg.count()
	leader := z.Leader()
	if leader < 0 {
		t.Fatalf("no leader")
	}
	if err := z.Kill(leader); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	killedAt := reg.count()
	deadline := time.Now().Add(30 * time.Second)
	for reg.count() < killedAt+20 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	unav := wait()
	after := reg.count() - killedAt
	t.Logf("grants: %d before the kill, %d after; %d tries refused or unavailable", beforeKill, after, unav)
	if beforeKill == 0 {
		t.Errorf("no grants before the kill")
	}
	if after < 20 {
		t.Errorf("%d grants in 30s after killing the leader, want the service to continue (>= 20)", after)
	}
	for _, p := range reg.problems {
		t.Error(p)
	}
	// An orphaned node (a create whose reply was lost, queued again) would
	// hold the lock for its whole TTL of 15s.
	if reg.maxGap > 7*time.Second {
		t.Errorf("the lock went %v without a grant, want the failover to take well under the 15s TTL", reg.maxGap)
	}
	t.Logf("longest time between two grants: %v", reg.maxGap)
}

// faultyConn lets a test lose the reply to one create: the request reaches
// the server, the reply never reaches the client, and the connection drops.
type faultyConn struct {
	net.Conn
	f *faults
}

type faults struct {
	armed    atomic.Bool // lose the reply to the next create
	dropRead atomic.Bool
	creates  atomic.Int64
	multi    bool // multi-ops count as creates (set before use)
}

const (
	opCreate = 1  // ZooKeeper's opcode for create
	opMulti  = 14 // and for multi, which a keyed acquire creates with
)

func (c *faultyConn) Write(p []byte) (int, error) {
	// A request: 4-byte length, 4-byte xid, 4-byte opcode.
	var op int32 = -1
	if len(p) >= 12 {
		op = int32(binary.BigEndian.Uint32(p[8:12]))
	}
	if op == opCreate || op == opMulti && c.f.multi {
		c.f.creates.Add(1)
		if c.f.armed.CompareAndSwap(true, false) {
			c.f.dropRead.Store(true)
		}
	}
	return c.Conn.Write(p)
}

func (c *faultyConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if c.f.dropRead.CompareAndSwap(true, false) {
		c.Conn.Close()
		return 0, io.ErrUnexpectedEOF
	}
	return n, err
}

// When the reply to a create is lost, the acquirer finds its node by the
// protected prefix instead of queueing a second one behind an orphan.
func TestLostCreateReplyLeavesNoOrphan(t *testing.T) {
	z := sharedZK(t, 1)
	f := &faults{}
	conn := dial(t, z.Addrs(), zk.WithDialer(func(network, addr string, timeout time.Duration) (net.Conn, error) {
		c, err := net.DialTimeout(network, addr, timeout)
		if err != nil {
			return nil, err
		}
		return &faultyConn{Conn: c, f: f}, nil
	}))
	b := New(conn, Options{})
	t.Cleanup(func() { b.Close() })
	key := uniqueKey(t)
	// The key's container exists, so the next create is the queue node's.
	g, err := b.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, TTL: 10 * time.Second})
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if err := b.Release(ctxFor(t, 10*time.Second), key, g.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	creates := f.creates.Load()
	f.armed.Store(true)
	g, err = b.Acquire(ctxFor(t, 20*time.Second), backend.AcquireRequest{Key: key, Owner: "lost-reply", TTL: 10 * time.Second, Wait: 5 * time.Second})
	if err != nil {
		t.Fatalf("Acquire with a lost create reply: %v", err)
	}
	if f.armed.Load() {
		t.Fatalf("the fault never fired")
	}
	if got := f.creates.Load() - creates; got != 1 {
		t.Errorf("%d creates sent, want 1 (the node whose reply was lost, adopted)", got)
	}
	names, _, err := conn.Children(b.keyPath(key))
	if err != nil {
		t.Fatalf("Children: %v", err)
	}
	if len(names) != 1 {
		t.Errorf("queue = %v, want exactly the one node", names)
	}
	if _, err := b.Renew(ctxFor(t, 10*time.Second), key, g.LeaseID, 10*time.Second); err != nil {
		t.Errorf("Renew of the adopted grant: %v", err)
	}
}

// Kill the member a lockd's client is connected to while it holds a grant
// and has a waiter queued: the client reconnects to another member, the
// grant is still its own (renewable, refused to others), and the waiter gets
// the lock once it is released — never twice.
func TestKillConnectedMember(t *testing.T) {
	requireZK(t)
	z := testserver.ZooKeeper(t, 3)
	b1 := newBackend(t, z.Addrs(), Options{})
	b2 := newBackend(t, z.Addrs(), Options{})
	key := uniqueKey(t)
	g, err := b1.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, Owner: "b1", TTL: 20 * time.Second})
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	type result struct {
		g   backend.Grant
		err error
	}
	waiter := make(chan result, 1)
	go func() {
		w, err := b1.Acquire(ctxFor(t, 60*time.Second), backend.AcquireRequest{Key: key, Owner: "b1-waiter", TTL: 20 * time.Second, Wait: 45 * time.Second})
		waiter <- result{w, err}
	}()
	waitFor(t, func() bool {
		st, err := b2.Inspect(ctxFor(t, 10*time.Second), key)
		return err == nil && st.Waiters == 1
	}, "the waiter to queue")

	victim := -1
	for i, a := range z.Addrs() {
		if a == b1.conn.Server() {
			victim = i
		}
	}
	if victim < 0 {
		t.Fatalf("b1 connected to %q, not a member of %v", b1.conn.Server(), z.Addrs())
	}
	if err := z.Kill(victim); err != nil {
		t.Fatalf("Kill(%d): %v", victim, err)
	}
	// The grant is refused to others and renewed by its owner once the
	// client has reconnected.
	waitFor(t, func() bool {
		_, err := b2.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, TTL: time.Second})
		var he *backend.HeldError
		if errors.As(err, &he) && he.Holder != nil && he.Holder.Token == g.Token {
			return true
		}
		if err == nil {
			t.Fatalf("another replica was granted the held lock")
		}
		return false
	}, "another replica to see the grant")
	waitFor(t, func() bool {
		_, err := b1.Renew(ctxFor(t, 10*time.Second), key, g.LeaseID, 20*time.Second)
		if err != nil && !errors.Is(err, backend.ErrUnavailable) {
			t.Fatalf("Renew after the kill: %v", err)
		}
		return err == nil
	}, "the renew after the kill")
	if b1.conn.Server() == z.Addr(victim) {
		t.Errorf("client still names the killed member %s", z.Addr(victim))
	}
	select {
	case r := <-waiter:
		t.Fatalf("waiter returned before the release: %+v %v", r.g, r.err)
	default:
	}
	waitFor(t, func() bool {
		err := b1.Release(ctxFor(t, 10*time.Second), key, g.LeaseID)
		if err != nil && !errors.Is(err, backend.ErrUnavailable) {
			t.Fatalf("Release after the kill: %v", err)
		}
		return err == nil
	}, "the release after the kill")
	r := <-waiter
	if r.err != nil {
		t.Fatalf("waiter: %v", r.err)
	}
	if r.g.Token <= g.Token {
		t.Errorf("waiter's token %d after %d, want greater", r.g.Token, g.Token)
	}
	st, err := b2.Inspect(ctxFor(t, 10*time.Second), key)
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	if !st.Held || st.Holder.Token != r.g.Token || st.Waiters != 0 {
		t.Errorf("Inspect = held %v holder %+v waiters %d, want held by the waiter (token %d) alone", st.Held, st.Holder, st.Waiters, r.g.Token)
	}
	if err := z.Restart(victim); err != nil {
		t.Fatalf("Restart(%d): %v", victim, err)
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A restarted lockd (a new Backend on a new session) renews and releases the
// grants the old one made, and tokens keep increasing.
func TestRestartedLockdHonoursGrants(t *testing.T) {
	z := sharedZK(t, 1)
	old := newBackend(t, z.Addrs(), Options{})
	keys := []string{uniqueKey(t) + "-a", uniqueKey(t) + "-b", uniqueKey(t) + "-c"}
	var grants []backend.Grant
	for _, k := range keys {
		g, err := old.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: k, Owner: "old", TTL: 5 * time.Second})
		if err != nil {
			t.Fatalf("Acquire %s: %v", k, err)
		}
		grants = append(grants, g)
	}
	old.Close()
	restarted := newBackend(t, z.Addrs(), Options{})
	for i, g := range grants {
		if _, err := restarted.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: g.Key, TTL: time.Second}); !errors.Is(err, backend.ErrHeld) {
			t.Errorf("%s: single try on the restarted lockd: %v, want ErrHeld", g.Key, err)
		}
		r, err := restarted.Renew(ctxFor(t, 10*time.Second), g.Key, g.LeaseID, 10*time.Second)
		if err != nil {
			t.Fatalf("%s: Renew after restart: %v", g.Key, err)
		}
		if r.Token != g.Token || r.Owner != "old" {
			t.Errorf("%s: renewed {token %d owner %q}, want {%d %q}", g.Key, r.Token, r.Owner, g.Token, "old")
		}
		if i == 2 {
			continue // left to expire
		}
		if err := restarted.Release(ctxFor(t, 10*time.Second), g.Key, g.LeaseID); err != nil {
			t.Fatalf("%s: Release after restart: %v", g.Key, err)
		}
		n, err := restarted.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: g.Key, TTL: time.Second})
		if err != nil {
			t.Fatalf("%s: Acquire after release: %v", g.Key, err)
		}
		if n.Token <= g.Token {
			t.Errorf("%s: token %d after %d, want greater", g.Key, n.Token, g.Token)
		}
	}
}

// A lockd that died while waiting leaves a node in the queue; once its wait
// (plus the grace) is over the node is skipped, so it neither receives the
// lock nor blocks the waiter behind it.
func TestAbandonedWaiterIsSkipped(t *testing.T) {
	z := sharedZK(t, 1)
	b := newBackend(t, z.Addrs(), Options{})
	key := uniqueKey(t)
	g, err := b.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, TTL: 30 * time.Second})
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	// What a waiting lockd leaves when it dies: its node, with a wait that
	// ended (plus grace) a moment from now.
	deadName := nodeName(lease.NewID(), 30*time.Second, time.Now().Add(300*time.Millisecond), "dead", "")
	dead := nodeData{Deadline: time.Now().Add(30 * time.Second).UnixMilli(), TTL: 30000}
	if _, err := b.conn.Create(b.keyPath(key)+"/"+deadName, dead.encode(), zk.FlagSequence, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatalf("Create: %v", err)
	}
	done := make(chan error, 1)
	var got backend.Grant
	go func() {
		var err error
		got, err = b.Acquire(ctxFor(t, 30*time.Second), backend.AcquireRequest{Key: key, Owner: "live", TTL: 10 * time.Second, Wait: 20 * time.Second})
		done <- err
	}()
	time.Sleep(500 * time.Millisecond)
	released := time.Now()
	if err := b.Release(ctxFor(t, 10*time.Second), key, g.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("live waiter: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("live waiter behind an abandoned node not granted 5s after the release")
	}
	if took := time.Since(released); took > time.Second {
		t.Errorf("live waiter granted %v after the release, want promptly", took)
	}
	if got.Owner != "live" {
		t.Errorf("granted to %q, want the live waiter", got.Owner)
	}
	names, _, err := b.conn.Children(b.keyPath(key))
	if err != nil {
		t.Fatalf("Children: %v", err)
	}
	if len(names) != 1 {
		t.Errorf("queue = %v, want only the live holder (the abandoned node removed)", names)
	}
}

// Once its queue is empty, a key's node is reaped by ZooKeeper (a container
// node); the key's next grant still gets a larger token although the
// sequence counter started again — why the token is the czxid. The server
// reaps containers whatever their ACL, lockd's digest ACL included.
func TestEmptyKeyNodeIsReaped(t *testing.T) {
	z := sharedZK(t, 1)
	t.Run("open ACL", func(t *testing.T) { emptyKeyNodeIsReaped(t, newBackend(t, z.Addrs(), Options{})) })
	t.Run("digest ACL", func(t *testing.T) {
		emptyKeyNodeIsReaped(t, digestBackend(t, z.Addrs(), uniqueRoot(t), lockdDigest))
	})
}

func emptyKeyNodeIsReaped(t *testing.T, b *Backend) {
	key := uniqueKey(t)
	g, err := b.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, TTL: 10 * time.Second})
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if err := b.Release(ctxFor(t, 10*time.Second), key, g.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	waitFor(t, func() bool {
		ok, _, err := b.conn.Exists(b.keyPath(key))
		return err == nil && !ok
	}, "the empty key node to be reaped")
	g2, err := b.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, TTL: 10 * time.Second})
	if err != nil {
		t.Fatalf("Acquire after the reap: %v", err)
	}
	seq := func(id string) string { return id[len(id)-10:] }
	if seq(g2.LeaseID) != seq(g.LeaseID) {
		t.Logf("sequence numbers %s then %s", seq(g.LeaseID), seq(g2.LeaseID))
	}
	if g2.Token <= g.Token {
		t.Errorf("token %d after %d across a reaped key node, want greater", g2.Token, g.Token)
	}
}

// BenchmarkHandoff measures release → next holder's grant with two clients
// alternating on one key, for this backend and for go-zookeeper's own Lock on
// the same server.
func BenchmarkHandoff(b *testing.B) {
	z := sharedZK(b, 1)
	b.Run("lockd-zk", func(b *testing.B) {
		bs := []*Backend{newBackend(b, z.Addrs(), Options{}), newBackend(b, z.Addrs(), Options{})}
		key := uniqueKey(b)
		ctx := context.Background()
		alternate(b, func(i int) (func(), error) {
			g, err := bs[i].Acquire(ctx, backend.AcquireRequest{Key: key, TTL: time.Minute, Wait: time.Minute})
			if err != nil {
				return nil, err
			}
			return func() {
				if err := bs[i].Release(ctx, key, g.LeaseID); err != nil {
					b.Error(err)
				}
			}, nil
		})
	})
	b.Run("zk.Lock", func(b *testing.B) {
		conns := []*zk.Conn{dial(b, z.Addrs()), dial(b, z.Addrs())}
		for _, c := range conns {
			b.Cleanup(c.Close)
		}
		p := "/zklock-bench/" + uniqueKey(b)
		alternate(b, func(i int) (func(), error) {
			l := zk.NewLock(conns[i], p, zk.WorldACL(zk.PermAll))
			if err := l.Lock(); err != nil {
				return nil, err
			}
			return func() {
				if err := l.Unlock(); err != nil {
					b.Error(err)
				}
			}, nil
		})
	})
}

// alternate runs two clients that take turns on one lock b.N times and
// reports the time from the start of each release to the other client's
// grant.
func alternate(b *testing.B, lock func(client int) (unlock func(), err error)) {
	var (
		mu        sync.Mutex
		releasing time.Time
		handoffs  []time.Duration
		wg        sync.WaitGroup
		turns     atomic.Int64
	)
	b.ResetTimer()
	for c := 0; c < 2; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for turns.Add(1) <= int64(b.N) {
				unlock, err := lock(c)
				if err != nil {
					b.Error(err)
					return
				}
				now := time.Now()
				mu.Lock()
				if !releasing.IsZero() {
					handoffs = append(handoffs, now.Sub(releasing))
				}
				releasing = time.Now()
				mu.Unlock()
				unlock()
			}
		}(c)
	}
	wg.Wait()
	b.StopTimer()
	if len(handoffs) == 0 {
		return
	}
	sort.Slice(handoffs, func(i, j int) bool { return handoffs[i] < handoffs[j] })
	var sum time.Duration
	for _, h := range handoffs {
		sum += h
	}
	b.ReportMetric(float64(sum.Microseconds())/float64(len(handoffs)), "µs/handoff")
	b.ReportMetric(float64(handoffs[len(handoffs)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(handoffs[len(handoffs)*99/100].Microseconds()), "p99-µs")
}

// A session expiry loses no lock: no grant or queue place depends on the
// session. The waiter's client is cut off (a real TCP proxy, stopped) for
// longer than its session timeout, so ZooKeeper expires the session; the
// holder releases meanwhile; once the proxy is back the client gets a new
// session, the lost watch is reported, and the waiter takes the lock from the
// place in the queue it never lost.
func TestSessionExpiryLosesNoLock(t *testing.T) {
	z := sharedZK(t, 1)
	proxy := zkProxy(t, z.Addr(0))

	var expired atomic.Bool
	conn, err := dialSession(ctxFor(t, 30*time.Second), []string{proxy.Listen}, time.Second, zk.WithEventCallback(func(ev zk.Event) {
		if ev.State == zk.StateExpired {
			expired.Store(true)
		}
	}))
	if err != nil {
		t.Fatalf("dial through the proxy: %v", err)
	}
	waiterB := New(conn, Options{})
	t.Cleanup(func() { waiterB.Close() })
	holderB := newBackend(t, z.Addrs(), Options{})
	key := uniqueKey(t)
	g, err := holderB.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, TTL: 30 * time.Second})
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	type result struct {
		g   backend.Grant
		err error
	}
	waiter := make(chan result, 1)
	go func() {
		w, err := waiterB.Acquire(ctxFor(t, 60*time.Second), backend.AcquireRequest{Key: key, Owner: "expired-session", TTL: 30 * time.Second, Wait: 45 * time.Second})
		waiter <- result{w, err}
	}()
	waitFor(t, func() bool {
		st, err := holderB.Inspect(ctxFor(t, 10*time.Second), key)
		return err == nil && st.Waiters == 1
	}, "the waiter to queue")
	time.Sleep(100 * time.Millisecond) // its watch is set

	proxy.Stop()
	time.Sleep(3 * time.Second) // three session timeouts: ZooKeeper expires it
	if err := holderB.Release(ctxFor(t, 10*time.Second), key, g.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if err := proxy.Start(); err != nil {
		t.Fatalf("proxy restart: %v", err)
	}
	var r result
	select {
	case r = <-waiter:
	case <-time.After(20 * time.Second):
		t.Fatalf("waiter not granted 20s after its client could reach ZooKeeper again")
	}
	if r.err != nil {
		t.Fatalf("waiter: %v", r.err)
	}
	if !expired.Load() {
		t.Errorf("the client never saw its session expire: the test did not test expiry")
	}
	if r.g.Token <= g.Token {
		t.Errorf("token %d after %d, want greater", r.g.Token, g.Token)
	}
	st, err := holderB.Inspect(ctxFor(t, 10*time.Second), key)
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	if !st.Held || st.Holder.Owner != "expired-session" || st.Waiters != 0 {
		t.Errorf("Inspect = held %v holder %+v waiters %d, want held by the waiter alone", st.Held, st.Holder, st.Waiters)
	}
}

// The backend that removes an expired grant tells its OnExpire hook which
// grant it was.
func TestExpiryHook(t *testing.T) {
	z := sharedZK(t, 1)
	expired := make(chan backend.Expiry, 4)
	b := newBackend(t, z.Addrs(), Options{Hooks: backend.Hooks{OnExpire: func(x backend.Expiry) { expired <- x }}})
	gone := newBackend(t, z.Addrs(), Options{})
	key := uniqueKey(t)
	g, err := gone.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, Owner: "gone", TTL: 200 * time.Millisecond})
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	n, err := b.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, TTL: time.Second, Wait: 5 * time.Second})
	if err != nil {
		t.Fatalf("waiter: %v", err)
	}
	if n.Token <= g.Token {
		t.Errorf("token %d after %d, want greater", n.Token, g.Token)
	}
	select {
	case x := <-expired:
		if want := (backend.Expiry{Key: key, Owner: "gone", Token: g.Token}); x != want {
			t.Errorf("OnExpire(%+v), want %+v", x, want)
		}
	default:
		t.Errorf("OnExpire not called by the backend that removed the expired grant")
	}
}

// Closing a backend (lockd stopping) ends its waiting acquires at once with
// ErrUnavailable, and leaves the grants it made to run on.
func TestCloseEndsWaits(t *testing.T) {
	z := sharedZK(t, 1)
	b := New(dial(t, z.Addrs()), Options{})
	other := newBackend(t, z.Addrs(), Options{})
	key := uniqueKey(t)
	g, err := b.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, TTL: 20 * time.Second})
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := b.Acquire(ctxFor(t, 60*time.Second), backend.AcquireRequest{Key: key, TTL: time.Second, Wait: 30 * time.Second})
		done <- err
	}()
	waitFor(t, func() bool {
		st, err := other.Inspect(ctxFor(t, 10*time.Second), key)
		return err == nil && st.Waiters == 1
	}, "the waiter to queue")
	closed := time.Now()
	b.Close()
	select {
	case err := <-done:
		if !errors.Is(err, backend.ErrUnavailable) {
			t.Errorf("waiting acquire after Close: %v, want ErrUnavailable", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("waiting acquire still waiting %v after Close", time.Since(closed))
	}
	if _, err := other.Renew(ctxFor(t, 10*time.Second), key, g.LeaseID, 20*time.Second); err != nil {
		t.Errorf("the closed backend's grant: Renew elsewhere: %v", err)
	}
}

// A waiter two places back is not woken by the handoff ahead of it, yet
// when the new holder's lockd dies right after its grant, that waiter gets
// the lock within the holder's TTL (+1 s): it set a timer at the earliest
// moment its predecessor could stop counting.
func TestWaiterBehindDeadNewHolder(t *testing.T) {
	z := sharedZK(t, 1)
	holderB := newBackend(t, z.Addrs(), Options{})
	dying := newBackend(t, z.Addrs(), Options{})
	last := newBackend(t, z.Addrs(), Options{})
	key := uniqueKey(t)
	g, err := holderB.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, TTL: 30 * time.Second})
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	const ttl = 1500 * time.Millisecond
	first := make(chan backend.Grant, 1)
	go func() {
		w, err := dying.Acquire(ctxFor(t, 30*time.Second), backend.AcquireRequest{Key: key, Owner: "dies", TTL: ttl, Wait: 20 * time.Second})
		if err == nil {
			first <- w
		}
		dying.Close() // granted, then its lockd is gone: nobody renews or releases
	}()
	waitFor(t, func() bool {
		st, err := holderB.Inspect(ctxFor(t, 10*time.Second), key)
		return err == nil && st.Waiters == 1
	}, "the first waiter to queue")
	second := make(chan backend.Grant, 1)
	go func() {
		w, err := last.Acquire(ctxFor(t, 30*time.Second), backend.AcquireRequest{Key: key, Owner: "last", TTL: 10 * time.Second, Wait: 20 * time.Second})
		if err != nil {
			t.Errorf("last waiter: %v", err)
		}
		second <- w
	}()
	waitFor(t, func() bool {
		st, err := holderB.Inspect(ctxFor(t, 10*time.Second), key)
		return err == nil && st.Waiters == 2
	}, "the second waiter to queue")
	time.Sleep(100 * time.Millisecond)
	wakes := last.wakes.Load()
	if err := holderB.Release(ctxFor(t, 10*time.Second), key, g.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	var w1 backend.Grant
	select {
	case w1 = <-first:
	case <-time.After(10 * time.Second):
		t.Fatalf("first waiter not granted")
	}
	if woken := last.wakes.Load() - wakes; woken != 0 {
		t.Errorf("the handoff to the first waiter woke the waiter behind it %d times, want 0", woken)
	}
	var w2 backend.Grant
	select {
	case w2 = <-second:
	case <-time.After(20 * time.Second):
		t.Fatalf("last waiter not granted 20s after the first holder's lockd died")
	}
	limit := w1.ExpiresAt.Add(time.Second)
	if at := time.Now(); at.After(limit) {
		t.Errorf("last waiter granted at %v, want by %v (the dead holder's expiry + 1s)", at.Format(time.StampMilli), limit.Format(time.StampMilli))
	}
	if w2.Token <= w1.Token {
		t.Errorf("token %d after %d, want greater", w2.Token, w1.Token)
	}
}

// A waiter that queued longer than its TTL keeps its turn even when its
// lockd learns of the release late: its client reaches ZooKeeper through a
// real TCP proxy that delays every packet, while newcomers on a fast link
// keep trying with wait 0. The release itself writes the waiter's fresh
// deadline, so no newcomer sees an expired holder to remove: the waiter is
// granted, with the deadline ZooKeeper holds, counted from the release, and
// no backend reports an expiry (no audit line, no metric) for a grant that
// never ran out.
func TestWaiterOutwaitingItsTTLKeepsTurnOverSlowLink(t *testing.T) {
	z := sharedZK(t, 1)
	proxy := zkProxy(t, z.Addr(0))

	var (
		mu       sync.Mutex
		expiries []backend.Expiry
	)
	hooks := backend.Hooks{OnExpire: func(x backend.Expiry) {
		mu.Lock()
		expiries = append(expiries, x)
		mu.Unlock()
	}}
	waiterB := New(dial(t, []string{proxy.Listen}), Options{Hooks: hooks})
	t.Cleanup(func() { waiterB.Close() })
	holderB := newBackend(t, z.Addrs(), Options{Hooks: hooks})
	newcomerB := newBackend(t, z.Addrs(), Options{Hooks: hooks})
	key := uniqueKey(t)

	h, err := holderB.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, Owner: "holder", TTL: 30 * time.Second})
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	const ttl = 2 * time.Second
	type result struct {
		g   backend.Grant
		err error
	}
	waiter := make(chan result, 1)
	go func() {
		w, err := waiterB.Acquire(ctxFor(t, 60*time.Second), backend.AcquireRequest{Key: key, Owner: "outwaiter", TTL: ttl, Wait: 30 * time.Second})
		waiter <- result{w, err}
	}()
	waitFor(t, func() bool {
		st, err := holderB.Inspect(ctxFor(t, 10*time.Second), key)
		return err == nil && st.Waiters == 1
	}, "the waiter to queue")
	time.Sleep(100 * time.Millisecond) // its watch is set
	slowLink(t, proxy, 100)

	var (
		newcomers sync.WaitGroup
		stop      = make(chan struct{})
		jumped    atomic.Int64
		tries     atomic.Int64
	)
	stopNewcomers := sync.OnceFunc(func() { close(stop); newcomers.Wait() })
	t.Cleanup(stopNewcomers)
	for i := 0; i < 4; i++ {
		newcomers.Add(1)
		go func() {
			defer newcomers.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				g, err := newcomerB.Acquire(ctx, backend.AcquireRequest{Key: key, Owner: "newcomer", TTL: 10 * time.Second})
				tries.Add(1)
				if err == nil {
					jumped.Add(1)
					_ = newcomerB.Release(ctx, key, g.LeaseID)
				}
				cancel()
			}
		}()
	}

	time.Sleep(ttl + 500*time.Millisecond) // the waiter's queued deadline passes
	released := time.Now()
	if err := holderB.Release(ctxFor(t, 10*time.Second), key, h.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	releaseDone := time.Now()
	var r result
	select {
	case r = <-waiter:
	case <-time.After(20 * time.Second):
		t.Fatalf("the waiter not granted 20s after the release")
	}
	stopNewcomers()
	if r.err != nil {
		t.Fatalf("the waiter that outwaited its TTL: %v, want the grant", r.err)
	}
	t.Logf("%d newcomer tries", tries.Load())
	if n := jumped.Load(); n > 0 {
		t.Errorf("%d newcomers trying with wait 0 were granted while the waiter was first in line", n)
	}
	mu.Lock()
	if len(expiries) > 0 {
		t.Errorf("OnExpire(%+v), want no call: no grant ran out", expiries)
	}
	mu.Unlock()

	// The grant is the one ZooKeeper holds, its TTL counted from the
	// handoff the release made.
	q, err := holderB.queue(ctxFor(t, 10*time.Second), holderB.keyPath(key))
	if err != nil {
		t.Fatalf("queue: %v", err)
	}
	if len(q) == 0 || q[0].owner != "outwaiter" {
		t.Fatalf("queue %v, want the waiter at its head", q)
	}
	stored, err := holderB.read(ctxFor(t, 10*time.Second), holderB.keyPath(key)+"/"+q[0].name)
	if err != nil {
		t.Fatalf("read the waiter's node: %v", err)
	}
	if got, want := r.g.ExpiresAt, time.UnixMilli(stored.data.Deadline); !got.Equal(want) {
		t.Errorf("grant expires_at %v, want the deadline ZooKeeper holds, %v", got.Format(time.StampMilli), want.Format(time.StampMilli))
	}
	if lo, hi := released.Add(ttl).Add(-time.Millisecond), releaseDone.Add(ttl); r.g.ExpiresAt.Before(lo) || r.g.ExpiresAt.After(hi) {
		t.Errorf("grant expires_at %v, want the TTL counted from the release: within [%v, %v]",
			r.g.ExpiresAt.Format(time.StampMilli), lo.Format(time.StampMilli), hi.Format(time.StampMilli))
	}
	if r.g.TTL != ttl || r.g.Owner != "outwaiter" || r.g.Token <= h.Token {
		t.Errorf("grant = {ttl %v owner %q token %d}, want {%v %q > %d}", r.g.TTL, r.g.Owner, r.g.Token, ttl, "outwaiter", h.Token)
	}
	if err := waiterB.Release(ctxFor(t, 10*time.Second), key, r.g.LeaseID); err != nil {
		t.Errorf("Release of the waiter's grant: %v", err)
	}
}

// A waiter whose caller gives up at the moment the release hands it the lock
// must not be left holding it with nobody to renew: either it leaves first
// and the release, finding it gone, hands on to the waiter behind it; or the
// release promotes it first and it leaves as a holder does, handing on. The
// quitter reaches ZooKeeper through a real proxy that delays every packet by
// 100 ms, and the release comes from before the cancellation to well after
// it, so both orders, and the races between, happen. The waiter behind has a
// 30 s TTL's worth of reasons to notice if the lock stuck with the one that
// left.
func TestWaiterLeavingAtTheHandoffHandsOn(t *testing.T) {
	z := sharedZK(t, 1)
	proxy := zkProxy(t, z.Addr(0))
	slowLink(t, proxy, 100)
	quitterB := New(dial(t, []string{proxy.Listen}), Options{})
	t.Cleanup(func() { quitterB.Close() })
	holderB := newBackend(t, z.Addrs(), Options{})
	behindB := newBackend(t, z.Addrs(), Options{})

	// The release's delay after the cancellation; negative: before it.
	delays := []time.Duration{-50, 0, 100, 150, 200, 250, 300, 450}
	granted := 0
	for _, d := range delays {
		d *= time.Millisecond
		key := fmt.Sprintf("%s-%d", uniqueKey(t), d.Milliseconds())
		h, err := holderB.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, TTL: 30 * time.Second})
		if err != nil {
			t.Fatalf("release %v after the cancel: Acquire: %v", d, err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		quitter := make(chan error, 1)
		go func() {
			g, err := quitterB.Acquire(ctx, backend.AcquireRequest{Key: key, Owner: "quitter", TTL: 30 * time.Second, Wait: 30 * time.Second})
			if err == nil {
				// Its grant beat the cancellation: what the HTTP layer does
				// then.
				if err = quitterB.Release(ctxFor(t, 10*time.Second), key, g.LeaseID); err == nil {
					err = errGranted
				}
			}
			quitter <- err
		}()
		waitFor(t, func() bool {
			st, err := holderB.Inspect(ctxFor(t, 10*time.Second), key)
			return err == nil && st.Waiters == 1
		}, "the quitter to queue")
		behind := make(chan error, 1)
		go func() {
			g, err := behindB.Acquire(ctxFor(t, 60*time.Second), backend.AcquireRequest{Key: key, Owner: "behind", TTL: 30 * time.Second, Wait: 45 * time.Second})
			if err == nil {
				err = behindB.Release(ctxFor(t, 10*time.Second), key, g.LeaseID)
			}
			behind <- err
		}()
		waitFor(t, func() bool {
			st, err := holderB.Inspect(ctxFor(t, 10*time.Second), key)
			return err == nil && st.Waiters == 2
		}, "the waiter behind to queue")
		time.Sleep(300 * time.Millisecond) // the quitter's watch is set, through the slow link

		release := func() {
			if err := holderB.Release(ctxFor(t, 10*time.Second), key, h.LeaseID); err != nil {
				t.Errorf("release %v after the cancel: Release: %v", d, err)
			}
		}
		if d < 0 {
			release()
			time.Sleep(-d)
			cancel()
		} else {
			cancel()
			time.Sleep(d)
			release()
		}
		switch err := <-quitter; {
		case errors.Is(err, errGranted):
			granted++
		case !errors.Is(err, context.Canceled):
			t.Fatalf("release %v after the cancel: the quitter got %v, want context.Canceled", d, err)
		}
		select {
		case err := <-behind:
			if err != nil {
				t.Fatalf("release %v after the cancel: the waiter behind: %v", d, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("release %v after the cancel: the waiter behind not granted 10s after the release: the lock stuck with the waiter that left", d)
		}
		names, _, err := holderB.conn.Children(holderB.keyPath(key))
		if err != nil && !errors.Is(err, zk.ErrNoNode) {
			t.Fatalf("Children: %v", err)
		}
		if len(names) != 0 {
			t.Fatalf("release %v after the cancel: queue %v once everyone left, want it empty", d, names)
		}
	}
	t.Logf("%d of %d quitters were granted before they saw their cancellation", granted, len(delays))
}

var errGranted = errors.New("granted")

// A lease renewed through another replica outlives the deadline the granting
// replica remembers: that replica's renew and release of it work, and read
// the node rather than trust the remembered deadline.
func TestLeaseRenewedElsewhereOutlivesItsCachedDeadline(t *testing.T) {
	z := sharedZK(t, 1)
	granter := newBackend(t, z.Addrs(), Options{})
	other := newBackend(t, z.Addrs(), Options{})
	const ttl = 300 * time.Millisecond
	grantAndRenewElsewhere := func(key string) backend.Grant {
		t.Helper()
		g, err := granter.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, TTL: ttl})
		if err != nil {
			t.Fatalf("Acquire: %v", err)
		}
		if _, err := other.Renew(ctxFor(t, 10*time.Second), key, g.LeaseID, 30*time.Second); err != nil {
			t.Fatalf("Renew through the other replica: %v", err)
		}
		return g
	}
	renewKey, releaseKey := uniqueKey(t)+"-renew", uniqueKey(t)+"-release"
	gRenew := grantAndRenewElsewhere(renewKey)
	gRelease := grantAndRenewElsewhere(releaseKey)
	time.Sleep(time.Until(gRelease.ExpiresAt) + 200*time.Millisecond) // the granter's remembered deadlines pass

	if _, err := granter.Renew(ctxFor(t, 10*time.Second), renewKey, gRenew.LeaseID, 30*time.Second); err != nil {
		t.Errorf("Renew through the granter of a lease renewed elsewhere: %v, want the renewal", err)
	}
	if err := granter.Release(ctxFor(t, 10*time.Second), releaseKey, gRelease.LeaseID); err != nil {
		t.Errorf("Release through the granter of a lease renewed elsewhere: %v, want it released", err)
	}
	if _, err := other.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: releaseKey, TTL: time.Second}); err != nil {
		t.Errorf("single try after the release: %v, want the lock free", err)
	}
}

// Single tries (wait 0) queue behind the holder and leave a moment later, all
// the time. Release hands the lock on to the first live node behind the
// holder; when that node leaves first, Release must hand on past it, not give
// up after reading a queue that keeps changing.
func TestReleaseAmidSingleTries(t *testing.T) {
	z := sharedZK(t, 1)
	holderB := newBackend(t, z.Addrs(), Options{})
	triers := []*Backend{holderB, newBackend(t, z.Addrs(), Options{})}
	key := uniqueKey(t)
	var (
		wg   sync.WaitGroup
		stop = make(chan struct{})
	)
	stopTriers := sync.OnceFunc(func() { close(stop); wg.Wait() })
	t.Cleanup(stopTriers)
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func(triers *Backend) {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				if g, err := triers.Acquire(ctx, backend.AcquireRequest{Key: key, Owner: "trier", TTL: 10 * time.Second}); err == nil {
					_ = triers.Release(ctx, key, g.LeaseID)
				}
				cancel()
			}
		}(triers[i%2])
	}
	const rounds = 30
	failed := 0
	for round := 0; round < rounds; round++ {
		g, err := holderB.Acquire(ctxFor(t, 30*time.Second), backend.AcquireRequest{Key: key, Owner: "holder", TTL: time.Second, Wait: 20 * time.Second})
		if err != nil {
			t.Fatalf("round %d: Acquire: %v", round, err)
		}
		time.Sleep(5 * time.Millisecond) // single tries queue behind it
		if err := holderB.Release(ctxFor(t, 10*time.Second), key, g.LeaseID); err != nil {
			failed++
			t.Errorf("round %d: Release: %v", round, err)
		}
	}
	stopTriers()
	if failed > 0 {
		t.Errorf("%d of %d releases failed amid single tries, want 0", failed, rounds)
	}
}

// A keyed acquire whose create multi-op reply is lost adopts its node by the
// protected prefix, like any acquire; a retry with the same key then gets
// that grant, on another replica too, and nothing else was queued.
func TestLostKeyedCreateReplyIsAdopted(t *testing.T) {
	z := sharedZK(t, 1)
	f := &faults{multi: true}
	conn := dial(t, z.Addrs(), zk.WithDialer(func(network, addr string, timeout time.Duration) (net.Conn, error) {
		c, err := net.DialTimeout(network, addr, timeout)
		if err != nil {
			return nil, err
		}
		return &faultyConn{Conn: c, f: f}, nil
	}))
	b := New(conn, Options{})
	t.Cleanup(func() { b.Close() })
	key := uniqueKey(t)
	req := backend.AcquireRequest{Key: key, Owner: "lost-reply", TTL: 10 * time.Second, Wait: 5 * time.Second,
		Idempotency: backend.Idempotency{Key: "k" + lease.NewID()[:16], Fingerprint: "fp"}}
	// The key's container and the record's shard exist, so the next
	// multi-op is the one that makes the queue node.
	warm := req
	warm.Idempotency.Key += "-warm"
	g, err := b.Acquire(ctxFor(t, 10*time.Second), warm)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if err := b.Release(ctxFor(t, 10*time.Second), key, g.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	// The warm-up's record most likely went to another shard than req's.
	if err := b.ensureShard(ctxFor(t, 10*time.Second), b.idemPath(req.Idempotency.Key)); err != nil {
		t.Fatalf("ensureShard: %v", err)
	}
	creates := f.creates.Load()
	f.armed.Store(true)
	g, err = b.Acquire(ctxFor(t, 20*time.Second), req)
	if err != nil {
		t.Fatalf("Acquire with a lost create reply: %v", err)
	}
	if f.armed.Load() {
		t.Fatalf("the fault never fired")
	}
	if g.Replayed {
		t.Errorf("the acquire that made the node was told it replayed")
	}
	if got := f.creates.Load() - creates; got != 1 {
		t.Errorf("%d creates sent, want 1 (the node whose reply was lost, adopted)", got)
	}
	names, _, err := conn.Children(b.keyPath(key))
	if err != nil {
		t.Fatalf("Children: %v", err)
	}
	if len(names) != 1 {
		t.Errorf("queue = %v, want exactly the one node", names)
	}
	again, err := newBackend(t, z.Addrs(), Options{}).Acquire(ctxFor(t, 10*time.Second), req)
	if err != nil {
		t.Fatalf("retry on another replica: %v", err)
	}
	if again.LeaseID != g.LeaseID || again.Token != g.Token || !again.ExpiresAt.Equal(g.ExpiresAt) || !again.Replayed {
		t.Errorf("retry got %+v, want the adopted grant %+v, replayed", again, g)
	}
}

// Idempotency records outlive their grants (the tombstone a late retry
// needs) but not their keep time: a keyed acquire sweeps its record's shard,
// so records stay bounded, and they never keep a key's container from being
// reaped.
func TestIdempotencyRecordsAreSweptAndKeysReaped(t *testing.T) {
	z := sharedZK(t, 1)
	b := newBackend(t, z.Addrs(), Options{Root: uniqueRoot(t)})
	// One shard, so that every keyed acquire sweeps the same one; records
	// kept only for their TTL (1s) instead of an hour.
	b.idem.shards, b.idem.keep, b.idem.sweepEvery = 1, 0, 0
	shard := b.root + idemDir + "/00"
	records := func() int {
		t.Helper()
		names, _, err := b.conn.Children(shard)
		if err != nil {
			t.Fatalf("Children(%s): %v", shard, err)
		}
		return len(names)
	}
	const n = 20
	var keys []string
	var reqs []backend.AcquireRequest
	for i := range n {
		key := fmt.Sprintf("%s-%d", uniqueKey(t), i)
		req := backend.AcquireRequest{Key: key, TTL: time.Second,
			Idempotency: backend.Idempotency{Key: fmt.Sprintf("k%d-%s", i, lease.NewID()[:8]), Fingerprint: "fp"}}
		g, err := b.Acquire(ctxFor(t, 10*time.Second), req)
		if err != nil {
			t.Fatalf("Acquire %d: %v", i, err)
		}
		// The record does not show the capability: only the key unseals it.
		raw, _, err := b.conn.Get(b.idemPath(req.Idempotency.Key))
		if err != nil {
			t.Fatalf("Get the record %d: %v", i, err)
		}
		if secret, _, _ := strings.Cut(g.LeaseID, "."); strings.Contains(string(raw), secret) {
			t.Fatalf("record %s holds the lease secret in clear", raw)
		}
		if err := b.Release(ctxFor(t, 10*time.Second), key, g.LeaseID); err != nil {
			t.Fatalf("Release %d: %v", i, err)
		}
		keys, reqs = append(keys, key), append(reqs, req)
	}
	// Every record is still there (none is past its keep time yet, unless
	// the machine is very slow), and tells a late retry the grant ended.
	if got := records(); got == 0 || got > n {
		t.Fatalf("%d records after %d keyed acquires, want 1..%d", got, n, n)
	}
	if _, err := b.Acquire(ctxFor(t, 10*time.Second), reqs[n-1]); !errors.Is(err, backend.ErrLeaseExpired) {
		t.Fatalf("retry of a released keyed acquire: %v, want ErrLeaseExpired", err)
	}
	// The records live outside the key containers: ZooKeeper reaps those.
	for _, k := range keys {
		waitFor(t, func() bool {
			ok, _, err := b.conn.Exists(b.keyPath(k))
			return err == nil && !ok
		}, "the empty key container "+k+" to be reaped")
	}
	time.Sleep(1500 * time.Millisecond) // past every record's keep time
	last := backend.AcquireRequest{Key: keys[0], TTL: 30 * time.Second,
		Idempotency: backend.Idempotency{Key: "k-last-" + lease.NewID()[:8], Fingerprint: "fp"}}
	if _, err := b.Acquire(ctxFor(t, 10*time.Second), last); err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	waitFor(t, func() bool { return records() == 1 }, "the sweep to leave only the live acquire's record")
}

// A retry that waits in the place of an attempt that then gives up is
// refused like it (never told the grant ended, never left a node), and the
// key's record went with the attempt: the same key later runs afresh.
func TestRetryOfAttemptThatGivesUpIsRefused(t *testing.T) {
	z := sharedZK(t, 1)
	// The retry's replica allows less grace, so it waits on after the first
	// attempt gave up and finds the node gone, rather than give up at the
	// same moment.
	b1, b2 := newBackend(t, z.Addrs(), Options{WaiterGrace: 3 * time.Second}), newBackend(t, z.Addrs(), Options{WaiterGrace: time.Second})
	key := uniqueKey(t)
	holder, err := b1.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, Owner: "holder", TTL: 30 * time.Second})
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	req := backend.AcquireRequest{Key: key, TTL: 10 * time.Second, Wait: time.Second,
		Idempotency: backend.Idempotency{Key: "k" + lease.NewID()[:16], Fingerprint: "fp"}}
	first := make(chan error, 1)
	go func() {
		_, err := b1.Acquire(ctxFor(t, 20*time.Second), req)
		first <- err
	}()
	waitFor(t, func() bool {
		st, err := b1.Inspect(ctxFor(t, 10*time.Second), key)
		return err == nil && st.Waiters == 1
	}, "the first attempt to queue")
	retry := req
	retry.Wait = 30 * time.Second // longer than the first attempt's
	_, err = b2.Acquire(ctxFor(t, 40*time.Second), retry)
	var held *backend.HeldError
	if !errors.As(err, &held) {
		t.Errorf("retry of an attempt that gave up: %v, want ErrHeld", err)
	}
	if err := <-first; !errors.As(err, &held) {
		t.Errorf("the attempt itself: %v, want ErrHeld", err)
	}
	if st, err := b1.Inspect(ctxFor(t, 10*time.Second), key); err != nil || st.Waiters != 0 {
		t.Errorf("inspect after both gave up: %+v, %v; want no waiter left", st, err)
	}
	if err := b1.Release(ctxFor(t, 10*time.Second), key, holder.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	g, err := b2.Acquire(ctxFor(t, 10*time.Second), req)
	if err != nil || g.Replayed {
		t.Fatalf("the same key after the refusal: %+v, %v; want a fresh grant", g, err)
	}
}

// BenchmarkKeyedAcquire measures an uncontended acquire + release without
// and with an idempotency key (whose record rides in the create's multi-op),
// and a retry of a held keyed acquire (the replay: record read, sync, queue
// listing, node read).
func BenchmarkKeyedAcquire(b *testing.B) {
	z := sharedZK(b, 1)
	be := newBackend(b, z.Addrs(), Options{})
	ctx := context.Background()
	run := func(b *testing.B, keyed bool) {
		key := uniqueKey(b)
		for i := 0; b.Loop(); i++ {
			req := backend.AcquireRequest{Key: key, TTL: time.Minute}
			if keyed {
				req.Idempotency = backend.Idempotency{Key: fmt.Sprintf("k%d-%s", i, lease.NewID()[:8]), Fingerprint: "fp"}
			}
			g, err := be.Acquire(ctx, req)
			if err != nil {
				b.Fatal(err)
			}
			if err := be.Release(ctx, key, g.LeaseID); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("plain", func(b *testing.B) { run(b, false) })
	b.Run("keyed", func(b *testing.B) { run(b, true) })
	b.Run("replay", func(b *testing.B) {
		key := uniqueKey(b)
		req := backend.AcquireRequest{Key: key, TTL: time.Hour,
			Idempotency: backend.Idempotency{Key: "k-" + lease.NewID()[:8], Fingerprint: "fp"}}
		g, err := be.Acquire(ctx, req)
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if again, err := be.Acquire(ctx, req); err != nil || again.LeaseID != g.LeaseID {
				b.Fatalf("replay: %+v, %v", again, err)
			}
		}
		if err := be.Release(ctx, key, g.LeaseID); err != nil {
			b.Fatal(err)
		}
	})
}

// zkProxy is a real TCP proxy (toxiproxy) in front of the ZooKeeper server
// at addr, stopped with t.
func zkProxy(t *testing.T, addr string) *toxiproxy.Proxy {
	t.Helper()
	proxy := toxiproxy.NewProxy(toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop()), "zk", "127.0.0.1:0", addr)
	if err := proxy.Start(); err != nil {
		t.Fatalf("proxy: %v", err)
	}
	t.Cleanup(proxy.Stop)
	return proxy
}

// slowLink delays every packet through proxy by ms milliseconds each way.
func slowLink(t *testing.T, proxy *toxiproxy.Proxy, ms int) {
	t.Helper()
	for _, stream := range []string{"upstream", "downstream"} {
		js := fmt.Sprintf(`{"name":"slow_%s","type":"latency","stream":%q,"toxicity":1,"attributes":{"latency":%d}}`, stream, stream, ms)
		if _, err := proxy.Toxics.AddToxicJson(strings.NewReader(js)); err != nil {
			t.Fatalf("latency toxic: %v", err)
		}
	}
}
