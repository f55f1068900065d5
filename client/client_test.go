package client_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/lockd/lockd/client"
	"github.com/lockd/lockd/internal/lockdtest"
)

func TestMain(m *testing.M) {
	lockdtest.Main(m, func() {
		if shared.srv != nil {
			shared.srv.Close()
		}
	})
}

// One lockd for the tests that do not break it; each test uses its own keys.
var shared struct {
	once sync.Once
	srv  *lockdtest.Server
	err  error
}

func sharedServer(t testing.TB) *lockdtest.Server {
	t.Helper()
	bin := lockdtest.Binary(t)
	shared.once.Do(func() {
		shared.srv, shared.err = lockdtest.StartServer(bin, lockdtest.Options{})
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.srv
}

func newClient(t *testing.T, url string, opts *client.Options) *client.Client {
	t.Helper()
	c, err := client.New(url, opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestAcquireHeldReleaseReacquire(t *testing.T) {
	c := newClient(t, sharedServer(t).URL, nil)
	ctx := ctxFor(t, time.Minute)

	before := time.Now()
	l, err := c.Acquire(ctx, k(t, "c-basic"), client.AcquireOptions{TTL: 5 * time.Second, Owner: "first"})
	after := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	if l.Token() == 0 || l.LeaseID() == "" || l.Key() != k(t, "c-basic") || l.Owner() != "first" {
		t.Fatalf("lock: key %q token %d lease %q owner %q", l.Key(), l.Token(), l.LeaseID(), l.Owner())
	}
	// The deadline counts from the send: between before+TTL and after+TTL.
	if d := l.Deadline(); d.Before(before.Add(5*time.Second)) || d.After(after.Add(5*time.Second)) {
		t.Fatalf("deadline %v not within [%v, %v] + TTL", d, before, after)
	}

	_, err = c.Acquire(ctx, k(t, "c-basic"), client.AcquireOptions{TTL: time.Second, Owner: "second"})
	if !errors.Is(err, client.ErrHeld) {
		t.Fatalf("second acquire: %v, want ErrHeld", err)
	}
	var e *client.Error
	if !errors.As(err, &e) || e.Status != 409 || e.Code != "lock_held" {
		t.Fatalf("second acquire error %#v, want 409 lock_held", err)
	}
	if e.Holder == nil || e.Holder.Owner != "first" || e.Holder.Token != l.Token() {
		t.Fatalf("holder %+v, want owner first token %d", e.Holder, l.Token())
	}

	st, err := c.Inspect(ctx, k(t, "c-basic"))
	if err != nil {
		t.Fatal(err)
	}
	if !st.Held || st.Holder == nil || st.Holder.Token != l.Token() || st.Holder.Owner != "first" {
		t.Fatalf("inspect %+v", st)
	}

	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.Lost():
	default:
		t.Fatal("Lost not closed after Release")
	}
	if !errors.Is(l.Err(), client.ErrReleased) {
		t.Fatalf("Err after release: %v", l.Err())
	}
	l2, err := c.Acquire(ctx, k(t, "c-basic"), client.AcquireOptions{TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Release(context.Background())
	if l2.Token() <= l.Token() {
		t.Fatalf("token %d after %d: not increasing", l2.Token(), l.Token())
	}
}

func TestRenewalKeepsLockPastTTL(t *testing.T) {
	c := newClient(t, sharedServer(t).URL, nil)
	ctx := ctxFor(t, time.Minute)
	l, err := c.Acquire(ctx, k(t, "c-renew"), client.AcquireOptions{TTL: 600 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	first := l.Deadline()
	select {
	case <-l.Lost():
		t.Fatalf("lost while renewing: %v", l.Err())
	case <-time.After(2 * time.Second): // > 3 TTLs
	}
	if !l.Deadline().After(first) {
		t.Fatalf("deadline did not move: %v then %v", first, l.Deadline())
	}
	st, err := c.Inspect(ctx, k(t, "c-renew"))
	if err != nil {
		t.Fatal(err)
	}
	if !st.Held || st.Holder.Token != l.Token() {
		t.Fatalf("after 3 TTLs: %+v, want held with token %d", st, l.Token())
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestWaitGetsLockOnRelease(t *testing.T) {
	c := newClient(t, sharedServer(t).URL, nil)
	ctx := ctxFor(t, time.Minute)
	l, err := c.Acquire(ctx, k(t, "c-wait"), client.AcquireOptions{TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(300 * time.Millisecond)
		l.Release(context.Background())
	}()
	l2, err := c.Acquire(ctx, k(t, "c-wait"), client.AcquireOptions{TTL: time.Second, Wait: 20 * time.Second})
	if err != nil {
		t.Fatalf("waiter: %v", err)
	}
	if l2.Token() <= l.Token() {
		t.Fatalf("waiter token %d not above %d", l2.Token(), l.Token())
	}
	l2.Release(ctx)
}

func TestRawLeaseErrors(t *testing.T) {
	c := newClient(t, sharedServer(t).URL, nil)
	ctx := ctxFor(t, time.Minute)
	g, err := c.AcquireLease(ctx, k(t, "c-raw"), client.AcquireOptions{TTL: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	r, err := c.RenewLease(ctx, k(t, "c-raw"), g.LeaseID, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r.Token != g.Token || r.TTL != time.Second {
		t.Fatalf("renew: token %d ttl %v, want %d 1s", r.Token, r.TTL, g.Token)
	}
	if _, err := c.RenewLease(ctx, k(t, "c-raw"), "AAAAAAAAAAAAAAAAAAAAAA", time.Second); !errors.Is(err, client.ErrLeaseExpired) {
		t.Fatalf("renew with a foreign lease: %v, want ErrLeaseExpired", err)
	}
	if err := c.ReleaseLease(ctx, k(t, "c-raw"), "AAAAAAAAAAAAAAAAAAAAAA"); !errors.Is(err, client.ErrLeaseExpired) {
		t.Fatalf("release with a foreign lease: %v, want ErrLeaseExpired", err)
	}
	if err := c.ReleaseLease(ctx, k(t, "c-raw"), g.LeaseID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RenewLease(ctx, k(t, "c-raw"), g.LeaseID, time.Second); !errors.Is(err, client.ErrLeaseExpired) {
		t.Fatalf("renew after release: %v, want ErrLeaseExpired", err)
	}
	_, err = c.AcquireLease(ctx, "bad key!", client.AcquireOptions{})
	var e *client.Error
	if !errors.As(err, &e) || e.Status != 400 || e.Code != "invalid_key" {
		t.Fatalf("invalid key: %v, want 400 invalid_key", err)
	}
}

func TestListShowsHeldLocks(t *testing.T) {
	c := newClient(t, sharedServer(t).URL, nil)
	ctx := ctxFor(t, time.Minute)
	var want []string
	for _, key := range []string{k(t, "c-list") + ":a", k(t, "c-list") + ":b", k(t, "c-list") + ":c"} {
		l, err := c.Acquire(ctx, key, client.AcquireOptions{TTL: 10 * time.Second, Owner: "lister"})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Release(context.Background())
		want = append(want, key)
	}
	got, err := c.List(ctx, k(t, "c-list")+":")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, s := range got {
		if !s.Held || s.Holder == nil || s.Holder.Owner != "lister" {
			t.Errorf("listed %+v", s)
		}
		keys = append(keys, s.Key)
	}
	if strings.Join(keys, ",") != strings.Join(want, ",") {
		t.Fatalf("listed %v, want %v", keys, want)
	}
}

// A renew refused by the server (the lease was released out from under the
// holder, with its lease id) closes Lost.
func TestLostWhenRenewRefused(t *testing.T) {
	c := newClient(t, sharedServer(t).URL, nil)
	ctx := ctxFor(t, time.Minute)
	l, err := c.Acquire(ctx, k(t, "c-refused"), client.AcquireOptions{TTL: 900 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ReleaseLease(ctx, k(t, "c-refused"), l.LeaseID()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.Lost():
	case <-time.After(5 * time.Second):
		t.Fatal("Lost not closed after the lease was released under the holder")
	}
	if !errors.Is(l.Err(), client.ErrLeaseExpired) {
		t.Fatalf("Err %v, want ErrLeaseExpired", l.Err())
	}
	if err := l.Release(ctx); !errors.Is(err, client.ErrLeaseExpired) {
		t.Fatalf("Release of a lost lock: %v, want ErrLeaseExpired", err)
	}
}

// When lockd stops answering (SIGSTOP), renewals cannot succeed and Lost
// closes at the client's deadline — counted from the last successful send,
// not from anything the server says — and not before it.
func TestLostAtDeadlineWhenServerPaused(t *testing.T) {
	srv := lockdtest.Start(t, nil)
	c := newClient(t, srv.URL, &client.Options{RetryBackoff: 20 * time.Millisecond})
	ctx := ctxFor(t, time.Minute)
	const ttl = 1500 * time.Millisecond
	l, err := c.Acquire(ctx, k(t, "c-paused"), client.AcquireOptions{TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Resume() })
	lastOK := l.Deadline() // no renew can succeed from here on
	select {
	case <-l.Lost():
	case <-time.After(3 * ttl):
		t.Fatalf("Lost not closed %v after the server stopped", 3*ttl)
	}
	now := time.Now()
	if now.Before(lastOK) {
		t.Fatalf("Lost closed at %v, before the deadline %v", now, lastOK)
	}
	if late := now.Sub(lastOK); late > 500*time.Millisecond {
		t.Errorf("Lost closed %v after the deadline", late)
	}
	if !errors.Is(l.Err(), client.ErrLeaseExpired) {
		t.Fatalf("Err %v, want ErrLeaseExpired", l.Err())
	}
}

// With a margin, Lost closes that long before the deadline.
func TestLostMargin(t *testing.T) {
	srv := lockdtest.Start(t, nil)
	c := newClient(t, srv.URL, nil)
	ctx := ctxFor(t, time.Minute)
	const ttl, margin = 2 * time.Second, 800 * time.Millisecond
	l, err := c.Acquire(ctx, k(t, "c-margin"), client.AcquireOptions{TTL: ttl, Margin: margin})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Resume() })
	deadline := l.Deadline()
	<-l.Lost()
	if left := time.Until(deadline); left < margin-300*time.Millisecond || left > margin {
		t.Fatalf("Lost closed %v before the deadline, want about %v", left, margin)
	}
}

// A connection that cannot be made is retried (nothing reached the server,
// so nothing can have been granted): an acquire issued while lockd is down
// succeeds once it is back, and the lock is held by that acquire.
func TestAcquireRetriedWhenServerDown(t *testing.T) {
	srv := lockdtest.Start(t, nil)
	c := newClient(t, srv.URL, &client.Options{MaxRetries: 40, RetryBackoff: 100 * time.Millisecond})
	ctx := ctxFor(t, 2*time.Minute)
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	type result struct {
		l   *client.Lock
		err error
	}
	done := make(chan result, 1)
	go func() {
		l, err := c.Acquire(ctx, k(t, "c-down"), client.AcquireOptions{TTL: 5 * time.Second, Owner: "retrier"})
		done <- result{l, err}
	}()
	time.Sleep(300 * time.Millisecond) // a few refused dials
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("acquire across a restart: %v", r.err)
	}
	st, err := c.Inspect(ctx, k(t, "c-down"))
	if err != nil {
		t.Fatal(err)
	}
	if !st.Held || st.Holder.Token != r.l.Token() {
		t.Fatalf("inspect %+v, want held with token %d", st, r.l.Token())
	}
	r.l.Release(ctx)
}

// An acquire whose every reply is lost is reported as ErrOutcomeUnknown,
// naming its idempotency key: an acquire with that key (here on a good
// connection) fetches the very grant the lost replies carried, instead of
// meeting an orphan that blocks the key for a TTL.
func TestAcquireReplyLostIsOutcomeUnknown(t *testing.T) {
	srv := sharedServer(t)
	proxy := dropReplies(t, srv.Addr)
	c := newClient(t, "http://"+proxy.Listen, &client.Options{RetryBackoff: 10 * time.Millisecond, MaxRetries: 2})
	ctx := ctxFor(t, time.Minute)
	key := k(t, "c-lostreply")
	const idem = "lost-reply-test-key"
	_, err := c.Acquire(ctx, key, client.AcquireOptions{TTL: 30 * time.Second, Owner: "orphan", IdempotencyKey: idem})
	if !errors.Is(err, client.ErrOutcomeUnknown) {
		t.Fatalf("acquire with every reply lost: %v, want ErrOutcomeUnknown", err)
	}
	if !strings.Contains(err.Error(), idem) {
		t.Errorf("the error does not name the idempotency key to fetch the grant with: %v", err)
	}
	direct := newClient(t, srv.URL, nil)
	st, err := direct.Inspect(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Held || st.Holder.Owner != "orphan" {
		t.Fatalf("inspect %+v: want the grant the lost replies carried", st)
	}
	l, err := direct.Acquire(ctx, key, client.AcquireOptions{TTL: 30 * time.Second, Owner: "orphan", IdempotencyKey: idem})
	if err != nil {
		t.Fatalf("acquire again with the same idempotency key: %v, want the grant", err)
	}
	if l.Token() != st.Holder.Token {
		t.Fatalf("fetched token %d, want the held grant's %d", l.Token(), st.Holder.Token)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// dropReplies is a real TCP proxy to addr that drops every reply and closes
// each connection 300 ms after its last byte.
func dropReplies(t *testing.T, addr string) *toxiproxy.Proxy {
	t.Helper()
	proxy := toxiproxy.NewProxy(toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop()), "lockd", "127.0.0.1:0", addr)
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Stop)
	if _, err := proxy.Toxics.AddToxicJson(strings.NewReader(`{"name":"drop","type":"timeout","stream":"downstream","attributes":{"timeout":300}}`)); err != nil {
		t.Fatal(err)
	}
	return proxy
}

// firstThrough is an HTTP client whose first connection goes through the
// proxy at via, and every later one straight to the server: the first
// attempt's reply is lost, the retry's is not.
func firstThrough(via string) *http.Client {
	var used atomic.Bool
	var d net.Dialer
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		if used.CompareAndSwap(false, true) {
			addr = via
		}
		return d.DialContext(ctx, network, addr)
	}}}
}

// A lost reply costs nothing: the client retries with the same
// Idempotency-Key and gets the grant the first attempt made.
func TestAcquireReplyLostRetriedSameGrant(t *testing.T) {
	srv := sharedServer(t)
	proxy := dropReplies(t, srv.Addr)
	c := newClient(t, srv.URL, &client.Options{RetryBackoff: 10 * time.Millisecond, HTTPClient: firstThrough(proxy.Listen)})
	ctx := ctxFor(t, time.Minute)
	key := k(t, "c-lostonce")
	before := time.Now()
	l, err := c.Acquire(ctx, key, client.AcquireOptions{TTL: 30 * time.Second, Owner: "once"})
	if err != nil {
		t.Fatalf("acquire whose first reply was lost: %v, want the grant", err)
	}
	defer l.Release(context.Background())
	st, err := newClient(t, srv.URL, nil).Inspect(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Held || st.Holder.Token != l.Token() {
		t.Fatalf("inspect %+v, want held by the returned grant (token %d): one grant, no orphan", st, l.Token())
	}
	// The grant may date from the first send: the deadline counts from it.
	if d := l.Deadline(); d.After(before.Add(30 * time.Second).Add(50 * time.Millisecond)) {
		t.Errorf("deadline %v counts from a retry's send, want from the first (%v + TTL)", d, before)
	}
}

// A waiter granted after a wait longer than its TTL must not come back with
// a deadline (counted from the acquire's send) already spent: the client
// renews at once and counts from that send.
func TestLongWaitGrantIsFreshened(t *testing.T) {
	c := newClient(t, sharedServer(t).URL, nil)
	ctx := ctxFor(t, time.Minute)
	holder, err := c.Acquire(ctx, k(t, "c-longwait"), client.AcquireOptions{TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(1500 * time.Millisecond)
		holder.Release(context.Background())
	}()
	const ttl = time.Second
	l, err := c.Acquire(ctx, k(t, "c-longwait"), client.AcquireOptions{TTL: ttl, Wait: 20 * time.Second})
	got := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(context.Background())
	if left := l.Deadline().Sub(got); left < ttl/2 {
		t.Fatalf("deadline only %v after the grant returned; want most of the %v TTL", left, ttl)
	}
	select {
	case <-l.Lost():
		t.Fatalf("lost right after a long wait: %v", l.Err())
	case <-time.After(1500 * time.Millisecond):
	}
}

// keys gives each test run its own keys (suffix per *testing.T), so that
// -count=N reruns on a shared server do not meet their own leftovers.
var keys sync.Map

func k(t *testing.T, name string) string {
	v, _ := keys.LoadOrStore(t, strconv.FormatInt(time.Now().UnixNano()%1e9, 36))
	return name + "-" + v.(string)
}
