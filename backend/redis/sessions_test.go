package redis

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/httpapi"
	"github.com/lockd/lockd/internal/lease"
	"github.com/lockd/lockd/internal/testserver"
)

func openSession(t *testing.T, b *Backend, owner string, ttl time.Duration) backend.Session {
	t.Helper()
	s, err := b.Sessions().Open(ctx(t), owner, ttl)
	if err != nil {
		t.Fatalf("Open session: %v", err)
	}
	return s
}

// A grant's key expires only as a garbage bound, an hour past its session's
// deadline; when a renew carries the session up to that bound, the renew
// moves every grant's key (and its event log) on, so that Redis never
// drops a grant of a live session. The hour is simulated by bringing the
// bound and the keys' expiry down to 2 s.
func TestSessionRenewMovesGrantKeysExpiryOn(t *testing.T) {
	srv := testserver.Redis(t, 1)
	b := newFactory(srv.Addr(0), Options{})(t).(*Backend)
	raw := goredis.NewClient(&goredis.Options{Addr: srv.Addr(0)})
	t.Cleanup(func() { _ = raw.Close() })
	sess := openSession(t, b, "long-lived", 10*time.Second)
	keys := []string{"gc-1", "gc-2"}
	for _, k := range keys {
		if _, err := b.Acquire(ctx(t), backend.AcquireRequest{Key: k, Session: sess.ID}); err != nil {
			t.Fatal(err)
		}
		if ttl := raw.PTTL(ctx(t), b.keys(k)[0]).Val(); ttl < time.Hour {
			t.Errorf("%s's lock key expires in %v, want at least an hour past the session's deadline", k, ttl)
		}
	}
	// An hour on: the bound is 2 s away, and so are the keys' expiries.
	skey := b.sessionKeys(sess.ID)[0]
	now, err := raw.Time(ctx(t)).Result()
	if err != nil {
		t.Fatal(err)
	}
	const soon = 2 * time.Second
	if err := raw.HSet(ctx(t), skey, "gc", now.Add(soon).UnixMilli()).Err(); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		raw.PExpire(ctx(t), b.keys(k)[0], soon)
		raw.PExpire(ctx(t), b.keys(k)[4], soon)
	}
	r, err := b.Sessions().Renew(ctx(t), sess.ID, 20*time.Second)
	if err != nil {
		t.Fatalf("Renew: %v", err)
	}
	for _, k := range keys {
		for i, what := range map[int]string{0: "lock key", 4: "event log"} {
			if ttl := raw.PTTL(ctx(t), b.keys(k)[i]).Val(); ttl < 20*time.Second+time.Hour-time.Minute {
				t.Errorf("after the renew, %s's %s expires in %v, want an hour past the session's new deadline (20s)", k, what, ttl)
			}
		}
	}
	time.Sleep(soon + 500*time.Millisecond)
	for _, k := range keys {
		st, err := b.Inspect(ctx(t), k)
		if err != nil || !st.Held || !sameMs(st.Holder.ExpiresAt, r.ExpiresAt) {
			t.Errorf("Inspect(%q) past the old bound = %+v (%v), want held until the session's %v", k, st.Holder, err, r.ExpiresAt)
		}
	}
}

func sameMs(a, b time.Time) bool { return a.UnixMilli() == b.UnixMilli() }

// A session grant's expiry is logged at the session's deadline with nobody
// touching the key — at the renewed deadline, not the one it was granted
// with — and inspection reads the key free once the session is over.
func TestSessionGrantExpiryIsAnEvent(t *testing.T) {
	srv := testserver.Redis(t, 1)
	b := newFactory(srv.Addr(0), Options{})(t).(*Backend)
	other := newFactory(srv.Addr(0), Options{})(t).(*Backend)
	key := "session-expiry-event"
	c, cancel := context.WithCancel(t.Context())
	defer cancel()
	events, err := b.Watch(c, key, "")
	if err != nil {
		t.Fatal(err)
	}
	sess := openSession(t, other, "expiring", 1500*time.Millisecond)
	g, err := other.Acquire(ctx(t), backend.AcquireRequest{Key: key, Owner: "in-session", Session: sess.ID})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	r, err := other.Sessions().Renew(ctx(t), sess.ID, 2500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	var got []backend.KeyEvent
	for len(got) < 3 {
		select {
		case ev, ok := <-events:
			if !ok || ev.Err != nil {
				t.Fatalf("watch ended (%v) after %+v", ev.Err, got)
			}
			got = append(got, ev)
			if ev.Kind == backend.KeyExpired && time.Now().Before(r.ExpiresAt) {
				t.Errorf("expired logged at %v, before the renewed deadline %v", time.Now(), r.ExpiresAt)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("events %+v, want snapshot, acquired, expired", got)
		}
	}
	if got[0].Kind != backend.KeySnapshot || got[1].Kind != backend.KeyAcquired || got[1].Token != g.Token || !sameMs(got[1].ExpiresAt, sess.ExpiresAt) ||
		got[2].Kind != backend.KeyExpired || got[2].Token != g.Token {
		t.Errorf("events %+v, want snapshot, acquired (token %d until %v), expired (token %d)", got, g.Token, sess.ExpiresAt, g.Token)
	}

	// Inspection alone (no script removes anything) reads an over
	// session's grant as free.
	key2 := "session-expiry-inspect"
	s2 := openSession(t, other, "short", 300*time.Millisecond)
	if _, err := other.Acquire(ctx(t), backend.AcquireRequest{Key: key2, Session: s2.ID}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(s2.ExpiresAt.Add(100 * time.Millisecond)))
	if st, err := b.Inspect(ctx(t), key2); err != nil || st.Held {
		t.Errorf("Inspect after the session's deadline = %+v (%v), want free", st, err)
	}
}

// Closing a session on one replica ends, at once, an acquire waiting in it
// on another replica, which runs its script again only every 20 s: the
// close's pub/sub message wakes it, not its heartbeat.
func TestSessionCloseEndsWaiterOnOtherReplica(t *testing.T) {
	srv := testserver.Redis(t, 1)
	waiterSide := newFactory(srv.Addr(0), Options{HeartbeatTimeout: time.Minute})(t).(*Backend)
	closer := newFactory(srv.Addr(0), Options{})(t).(*Backend)
	key := "close-wakes"
	holder, err := closer.Acquire(ctx(t), backend.AcquireRequest{Key: key, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	sess := openSession(t, closer, "waiter", time.Minute)
	done := make(chan error, 1)
	go func() {
		_, err := waiterSide.Acquire(ctx(t), backend.AcquireRequest{Key: key, Session: sess.ID, Wait: 30 * time.Second})
		done <- err
	}()
	waitWaiters(t, closer, key, 1)
	if err := closer.Sessions().Close(ctx(t), sess.ID); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, backend.ErrSessionExpired) {
			t.Fatalf("waiter: %v, want ErrSessionExpired", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter in the closed session still waits 10 s after Close")
	}
	waitWaiters(t, closer, key, 0)
	if st, err := closer.Inspect(ctx(t), key); err != nil || !st.Held || st.Holder.Token != holder.Token {
		t.Errorf("Inspect = %+v (%v), want still the holder's", st.Holder, err)
	}
}

// Over Redis Cluster a session's keys and its grants' are in different
// slots: the backend offers no sessions, says why, and refuses an acquire
// in a session before sending anything.
func TestNoSessionsOnCluster(t *testing.T) {
	cc := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: []string{"127.0.0.1:1"}})
	t.Cleanup(func() { _ = cc.Close() })
	b := &Backend{client: cc}
	if ss := b.Sessions(); ss != nil {
		t.Errorf("Sessions() over a cluster = %v, want nil", ss)
	}
	if got := b.Unsupported()[backend.FeatureSessions]; got != NoClusterSessions {
		t.Errorf("Unsupported()[sessions] = %q, want %q", got, NoClusterSessions)
	}
	_, err := b.Acquire(t.Context(), backend.AcquireRequest{Key: "k", Session: lease.NewID()})
	if err == nil || !strings.Contains(err.Error(), "Redis Cluster") {
		t.Errorf("Acquire in a session over a cluster: %v, want the reason", err)
	}
	standalone := &Backend{client: goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1"})}
	t.Cleanup(func() { _ = standalone.client.Close() })
	if standalone.Sessions() == nil || standalone.Unsupported()[backend.FeatureSessions] != "" {
		t.Errorf("standalone: Sessions() = %v, Unsupported() = %v; want sessions, not unsupported", standalone.Sessions(), standalone.Unsupported())
	}
}

// Through lockd's HTTP API on Redis: GET /v1/capabilities shows sessions
// kept in the store, and a session's grant is released by the session's
// close.
func TestHTTPSessionsOnRedis(t *testing.T) {
	srv := testserver.Redis(t, 1)
	ts := httptest.NewServer(httpapi.New(newFactory(srv.Addr(0), Options{})(t), httpapi.Options{Backend: "redis"}))
	t.Cleanup(ts.Close)
	call := func(method, path, body string, want int) map[string]any {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx(t), method, ts.URL+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := ts.Client().Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		if resp.StatusCode != want {
			t.Fatalf("%s %s: %d %v, want %d", method, path, resp.StatusCode, out, want)
		}
		return out
	}
	caps := call("GET", "/v1/capabilities", "", 200)
	if f, _ := caps["features"].(map[string]any); f == nil || f["sessions"] == nil || f["sessions"].(map[string]any)["expiry"] != "store" {
		t.Fatalf("redis capabilities = %v, want sessions {expiry: store}", caps)
	}
	if u, _ := caps["unsupported"].(map[string]any); u["sessions"] != nil {
		t.Errorf("redis capabilities: unsupported = %v, want sessions not among them", u)
	}
	sess := call("POST", "/v1/sessions", `{"ttl_ms": 10000, "owner": "w"}`, 201)
	sid, _ := sess["session_id"].(string)
	g := call("POST", "/v1/locks/http-s/acquire", `{"session_id": "`+sid+`"}`, 200)
	if g["expires_at"] != sess["expires_at"] {
		t.Errorf("grant expires_at %v, want the session's %v", g["expires_at"], sess["expires_at"])
	}
	call("POST", "/v1/locks/http-s/renew", `{"lease_id": "`+g["lease_id"].(string)+`"}`, 409)
	call("POST", "/v1/sessions/renew", `{"session_id": "`+sid+`"}`, 200)
	call("POST", "/v1/sessions/close", `{"session_id": "`+sid+`"}`, 204)
	if st := call("GET", "/v1/locks/http-s", "", 200); st["held"] != false {
		t.Errorf("lock after the session's close = %v, want free", st)
	}
	call("POST", "/v1/sessions/renew", `{"session_id": "`+sid+`"}`, 410)
}

// Redis restarted without persistence forgets sessions as it forgets
// locks: the session cannot be renewed and its grant is free at once. This
// asserts the README's documented limit.
func TestRestartWithoutPersistenceLosesSessions(t *testing.T) {
	srv := testserver.Redis(t, 1)
	b := newFactory(srv.Addr(0), Options{})(t).(*Backend)
	sess := openSession(t, b, "forgotten", time.Minute)
	key := "session-restart"
	if _, err := b.Acquire(ctx(t), backend.AcquireRequest{Key: key, Session: sess.ID}); err != nil {
		t.Fatal(err)
	}
	if err := srv.Restart(0); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	var err error
	for i := 0; i < 10; i++ { // the first command may meet the dead connection
		if _, err = b.Sessions().Renew(ctx(t), sess.ID, 0); !errors.Is(err, backend.ErrUnavailable) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !errors.Is(err, backend.ErrSessionExpired) {
		t.Errorf("Renew after a restart without persistence: %v, want ErrSessionExpired (the session is lost)", err)
	}
	if _, err := b.Acquire(ctx(t), backend.AcquireRequest{Key: key, TTL: time.Minute}); err != nil {
		t.Errorf("Acquire of the session's key after the restart: %v, want a grant (the lock was lost)", err)
	}
}

// An election led in a session is observed like any other: its leader
// shows the session's deadline; closing the session is a resignation, and a
// session that runs out is an expiry at its deadline, with nobody touching
// the election.
func TestObserveSessionLeader(t *testing.T) {
	srv := testserver.Redis(t, 1)
	b := newFactory(srv.Addr(0), Options{})(t).(*Backend)
	el := b.Elections()
	for _, tc := range []struct {
		name, reason string
		ttl          time.Duration
		end          func(sess backend.Session)
	}{
		{"observe-session-close", backend.ReasonResigned, time.Minute, func(sess backend.Session) {
			if err := b.Sessions().Close(ctx(t), sess.ID); err != nil {
				t.Fatal(err)
			}
		}},
		{"observe-session-expiry", backend.ReasonExpired, time.Second, func(backend.Session) {}},
	} {
		c, cancel := context.WithCancel(t.Context())
		events, err := el.Observe(c, tc.name)
		if err != nil {
			t.Fatal(err)
		}
		sess := openSession(t, b, "leader", tc.ttl)
		l, err := el.Campaign(ctx(t), backend.CampaignRequest{Name: tc.name, Owner: "leader", Value: "v", Session: sess.ID})
		if err != nil {
			t.Fatal(err)
		}
		tc.end(sess)
		var got []backend.ElectionEvent
		for len(got) < 3 {
			select {
			case ev := <-events:
				if ev.Err != nil {
					t.Fatalf("%s: observe ended: %v after %+v", tc.name, ev.Err, got)
				}
				got = append(got, ev)
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: events %+v, want no_leader, leader, no_leader", tc.name, got)
			}
		}
		cancel()
		if got[0].NoLeader == nil || got[1].Leader == nil || got[1].Leader.Term != l.Term || !sameMs(got[1].Leader.ExpiresAt, sess.ExpiresAt) ||
			got[2].NoLeader == nil || got[2].NoLeader.LastTerm != l.Term || got[2].NoLeader.Reason != tc.reason {
			t.Errorf("%s: events %+v %+v %+v, want no_leader, leader (term %d until %v), no_leader (%s, last term %d)",
				tc.name, got[0], got[1].Leader, got[2].NoLeader, l.Term, sess.ExpiresAt, tc.reason, l.Term)
		}
		if tc.reason == backend.ReasonExpired && time.Now().Before(sess.ExpiresAt) {
			t.Errorf("%s: expired before the session's deadline %v", tc.name, sess.ExpiresAt)
		}
	}
}
