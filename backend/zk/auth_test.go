package zk

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/backend/backendtest"
	"github.com/lockd/lockd/internal/lease"
)

var lockdDigest = Digest{User: "lockd", Password: "s3cret-" + lease.NewID()}

// authConn dials addrs and adds d's identity to the session (none when d is
// the zero Digest).
func authConn(t testing.TB, addrs []string, d Digest, opts ...func(*zk.Conn)) *zk.Conn {
	t.Helper()
	conn, err := dialSession(ctxFor(t, 30*time.Second), addrs, sessionTimeout, opts...)
	if err != nil {
		t.Fatalf("dial %v: %v", addrs, err)
	}
	t.Cleanup(conn.Close)
	if d != (Digest{}) {
		if err := d.AddAuth(conn); err != nil {
			t.Fatalf("AddAuth: %v", err)
		}
	}
	return conn
}

// digestBackend is a replica of lockd run with --zk-user lockd.
func digestBackend(t testing.TB, addrs []string, root string, d Digest) *Backend {
	t.Helper()
	b := New(authConn(t, addrs, d), Options{Root: root, ACL: d.ACL()})
	t.Cleanup(func() { b.Close() })
	return b
}

func uniqueRoot(t testing.TB) string {
	return "/" + strings.NewReplacer("/", "-", "#", "-").Replace(t.Name()) + "-" + lease.NewID()[:8]
}

// Every promise of the contract holds with digest auth and ACLs on.
func TestConformanceDigestACL(t *testing.T) {
	z := sharedZK(t, 1)
	root := uniqueRoot(t)
	if err := digestBackend(t, z.Addrs(), root, lockdDigest).CheckAccess(ctxFor(t, 10*time.Second)); err != nil {
		t.Fatalf("CheckAccess: %v", err)
	}
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		return digestBackend(t, z.Addrs(), root, lockdDigest)
	}, clocked(func(t *testing.T, o Options) backend.Backend {
		b := New(authConn(t, z.Addrs(), lockdDigest), o)
		t.Cleanup(func() { b.Close() })
		return b
	}, Options{Root: root, ACL: lockdDigest.ACL()}))
}

// Every node lockd creates carries its ACL, and nobody else — no auth,
// another digest user, lockd's user with a wrong password — can read, list,
// change or delete any of them, or add nodes among them.
func TestStrangersCannotTouchLockNodes(t *testing.T) {
	z := sharedZK(t, 1)
	root := uniqueRoot(t) + "/nested"
	b := digestBackend(t, z.Addrs(), root, lockdDigest)
	key := uniqueKey(t)
	g, err := b.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, Owner: "holder", TTL: 30 * time.Second})
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	waiter := make(chan error, 1)
	// The waiter's acquire is keyed: its idempotency record is lockd's too.
	idem := backend.Idempotency{Key: "k" + lease.NewID()[:16], Fingerprint: "fp"}
	go func() {
		_, err := b.Acquire(ctxFor(t, 60*time.Second), backend.AcquireRequest{Key: key, Owner: "waiter", TTL: 30 * time.Second, Wait: 45 * time.Second, Idempotency: idem})
		waiter <- err
	}()
	waitFor(t, func() bool {
		st, err := b.Inspect(ctxFor(t, 10*time.Second), key)
		return err == nil && st.Waiters == 1
	}, "the waiter to queue")

	kp := b.keyPath(key)
	queue, _, err := b.conn.Children(kp)
	if err != nil || len(queue) != 2 {
		t.Fatalf("queue of %s = %v, %v; want 2 nodes", kp, queue, err)
	}
	top := root[:strings.Index(root[1:], "/")+1]
	rec := b.idemPath(idem.Key)
	shard := rec[:strings.LastIndexByte(rec, '/')]
	nodes := []string{top, root, kp, kp + "/" + queue[0], kp + "/" + queue[1], root + idemDir, shard, rec}
	want := lockdDigest.ACL()
	for _, p := range nodes {
		acl, _, err := b.conn.GetACL(p)
		if err != nil {
			t.Fatalf("GetACL(%s) as lockd: %v", p, err)
		}
		if len(acl) != 1 || acl[0] != want[0] {
			t.Errorf("ACL of %s = %+v, want %+v (lockd's user alone, every right)", p, acl, want)
		}
	}

	holder := kp + "/" + queue[0]
	for _, tc := range []struct {
		name string
		who  Digest
	}{
		{"no auth", Digest{}},
		{"another user", Digest{User: "mallory", Password: "mallory"}},
		{"lockd's user, wrong password", Digest{User: lockdDigest.User, Password: "guess"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := authConn(t, z.Addrs(), tc.who)
			ops := []struct {
				what string
				do   func() error
			}{
				{"list the root", func() error { _, _, err := c.Children(root); return err }},
				{"list the queue", func() error { _, _, err := c.Children(kp); return err }},
				{"read the holder's data", func() error { _, _, err := c.Get(holder); return err }},
				{"read the holder's ACL", func() error { _, _, err := c.GetACL(holder); return err }},
				{"setData on the holder", func() error {
					_, err := c.Set(holder, []byte(`{"deadline_ms":9999999999999,"ttl_ms":1}`), -1)
					return err
				}},
				{"delete the holder", func() error { return c.Delete(holder, -1) }},
				{"delete the waiter", func() error { return c.Delete(kp+"/"+queue[1], -1) }},
				{"read an idempotency record", func() error { _, _, err := c.Get(rec); return err }},
				{"list idempotency records", func() error { _, _, err := c.Children(shard); return err }},
				{"delete an idempotency record", func() error { return c.Delete(rec, -1) }},
				{"plant an idempotency record", func() error {
					_, err := c.Create(shard+"/planted", nil, 0, zk.WorldACL(zk.PermAll))
					return err
				}},
				{"queue a node", func() error {
					_, err := c.Create(kp+"/_c_x-lock-", nil, zk.FlagSequence, zk.WorldACL(zk.PermAll))
					return err
				}},
				{"create a key", func() error {
					_, err := c.Create(root+"/other", nil, 0, zk.WorldACL(zk.PermAll))
					return err
				}},
				{"open the holder's ACL", func() error { _, err := c.SetACL(holder, zk.WorldACL(zk.PermAll), -1); return err }},
				{"open the root's ACL", func() error { _, err := c.SetACL(root, zk.WorldACL(zk.PermAll), -1); return err }},
			}
			for _, op := range ops {
				if err := op.do(); !errors.Is(err, zk.ErrNoAuth) {
					t.Errorf("%s: err = %v, want %v", op.what, err, zk.ErrNoAuth)
				}
			}
		})
	}

	// Nothing moved: the holder renews and releases, the waiter gets it.
	if _, err := b.Renew(ctxFor(t, 10*time.Second), key, g.LeaseID, 30*time.Second); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	if err := b.Release(ctxFor(t, 10*time.Second), key, g.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	select {
	case err := <-waiter:
		if err != nil {
			t.Fatalf("waiter: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("waiter not granted 20s after the release")
	}
}

// CheckAccess passes for the identity that owns Root, and refuses every
// other one with an error that names the node and the likely cause.
func TestCheckAccess(t *testing.T) {
	z := sharedZK(t, 1)
	root := uniqueRoot(t)
	if err := digestBackend(t, z.Addrs(), root, lockdDigest).CheckAccess(ctxFor(t, 10*time.Second)); err != nil {
		t.Fatalf("CheckAccess as the owner, root missing: %v", err)
	}
	if err := digestBackend(t, z.Addrs(), root, lockdDigest).CheckAccess(ctxFor(t, 10*time.Second)); err != nil {
		t.Fatalf("CheckAccess as the owner, root present: %v", err)
	}
	for _, tc := range []struct {
		name string
		who  Digest
	}{
		{"wrong password", Digest{User: lockdDigest.User, Password: "guess"}},
		{"another user", Digest{User: "mallory", Password: "mallory"}},
		{"no auth", Digest{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			acl := tc.who.ACL()
			if tc.who == (Digest{}) {
				acl = nil
			}
			b := New(authConn(t, z.Addrs(), tc.who), Options{Root: root, ACL: acl})
			t.Cleanup(func() { b.Close() })
			err := b.CheckAccess(ctxFor(t, 10*time.Second))
			if !errors.Is(err, ErrNoPermission) || !errors.Is(err, zk.ErrNoAuth) {
				t.Fatalf("CheckAccess = %v, want ErrNoPermission and zk.ErrNoAuth", err)
			}
			for _, want := range []string{root, "NoAuth", "wrong password"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("CheckAccess = %q, want it to say %q", err, want)
				}
			}
		})
	}

	// An operator made the root for lockd under a parent lockd may not
	// create in: lockd uses the root as it is.
	admin := Digest{User: "admin", Password: "admin-" + lease.NewID()}
	ac := authConn(t, z.Addrs(), admin)
	parent := uniqueRoot(t)
	if _, err := ac.Create(parent, nil, 0, admin.ACL()); err != nil {
		t.Fatalf("create %s as admin: %v", parent, err)
	}
	if _, err := ac.Create(parent+"/lockd", nil, 0, lockdDigest.ACL()); err != nil {
		t.Fatalf("create %s/lockd as admin: %v", parent, err)
	}
	b := digestBackend(t, z.Addrs(), parent+"/lockd", lockdDigest)
	if err := b.CheckAccess(ctxFor(t, 10*time.Second)); err != nil {
		t.Fatalf("CheckAccess on a root made for lockd: %v", err)
	}
	g, err := b.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: uniqueKey(t), TTL: 10 * time.Second})
	if err != nil {
		t.Fatalf("Acquire under a root made for lockd: %v", err)
	}
	if err := b.Release(ctxFor(t, 10*time.Second), g.Key, g.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
	// Under a parent lockd may not create in, a missing root is refused
	// naming the node that could not be made.
	b = digestBackend(t, z.Addrs(), parent+"/elsewhere", lockdDigest)
	if err := b.CheckAccess(ctxFor(t, 10*time.Second)); !errors.Is(err, zk.ErrNoAuth) || !strings.Contains(err.Error(), parent+"/elsewhere") {
		t.Errorf("CheckAccess under a foreign parent = %v, want NoAuth naming %s/elsewhere", err, parent)
	}
}

func TestDigestValidate(t *testing.T) {
	for _, tc := range []struct {
		d    Digest
		want string // "" = valid
	}{
		{Digest{User: "lockd", Password: "p:w"}, ""},
		{Digest{User: "", Password: "p"}, "needs a user"},
		{Digest{User: "a:b", Password: "p"}, "contains ':'"},
		{Digest{User: "lockd", Password: ""}, "empty password"},
	} {
		err := tc.d.Validate()
		if (err == nil) != (tc.want == "") || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%q) = %v, want %q", tc.d.User, err, tc.want)
		}
	}
}

// The identity outlives the connection: go-zookeeper adds it again after a
// reconnect (same session) and after a session expiry (new session), so the
// backend keeps writing its own nodes. The connection is cut with a real TCP
// proxy.
func TestDigestAuthSurvivesReconnect(t *testing.T) {
	z := sharedZK(t, 1)
	proxy := zkProxy(t, z.Addr(0))
	var sessions, expiries atomic.Int32
	// A session timeout of 3 s: a reconnect after a 100 ms cut must keep the
	// session even when a loaded machine is slow to reconnect (with 1 s it
	// once got a new one under a full compare run beside the suite).
	const sessionTimeout = 3 * time.Second
	conn, err := dialSession(ctxFor(t, 30*time.Second), []string{proxy.Listen}, sessionTimeout, zk.WithEventCallback(func(ev zk.Event) {
		switch ev.State {
		case zk.StateHasSession:
			sessions.Add(1)
		case zk.StateExpired:
			expiries.Add(1)
		}
	}))
	if err != nil {
		t.Fatalf("dial through the proxy: %v", err)
	}
	if err := lockdDigest.AddAuth(conn); err != nil {
		t.Fatalf("AddAuth: %v", err)
	}
	root := uniqueRoot(t)
	b := New(conn, Options{Root: root, ACL: lockdDigest.ACL()})
	t.Cleanup(func() { b.Close() })
	key := uniqueKey(t)
	g, err := b.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, TTL: 60 * time.Second})
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}

	for _, cut := range []struct {
		name    string
		outage  time.Duration
		expired bool
	}{
		{"reconnect", 100 * time.Millisecond, false},
		{"session expiry", 3 * sessionTimeout, true},
	} {
		before, session := sessions.Load(), conn.SessionID()
		proxy.Stop()
		time.Sleep(cut.outage)
		if err := proxy.Start(); err != nil {
			t.Fatalf("%s: proxy restart: %v", cut.name, err)
		}
		waitFor(t, func() bool {
			_, err := b.Renew(ctxFor(t, 10*time.Second), key, g.LeaseID, 60*time.Second)
			if err != nil && !errors.Is(err, backend.ErrUnavailable) {
				t.Fatalf("%s: Renew: %v", cut.name, err)
			}
			return err == nil
		}, "a renew after the "+cut.name)
		if sessions.Load() == before {
			t.Fatalf("%s: the client never reconnected: the test cut nothing", cut.name)
		}
		if got := conn.SessionID() != session; got != cut.expired {
			t.Errorf("%s: new session = %v, want %v", cut.name, got, cut.expired)
		}
		// A node made after the cut is lockd's too.
		g2, err := b.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key + "-" + cut.name[:3], TTL: 10 * time.Second})
		if err != nil {
			t.Fatalf("%s: Acquire: %v", cut.name, err)
		}
		if err := b.Release(ctxFor(t, 10*time.Second), g2.Key, g2.LeaseID); err != nil {
			t.Fatalf("%s: Release: %v", cut.name, err)
		}
	}
	if expiries.Load() == 0 {
		t.Errorf("the client never saw its session expire")
	}
	if err := b.Release(ctxFor(t, 10*time.Second), key, g.LeaseID); err != nil {
		t.Fatalf("Release: %v", err)
	}
}
