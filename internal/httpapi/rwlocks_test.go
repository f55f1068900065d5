package httpapi_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/lockd/lockd/backend"
	etcdb "github.com/lockd/lockd/backend/etcd"
	"github.com/lockd/lockd/internal/httpapi"
)

// The rwlock routes over real etcd, every answer checked against the spec:
// readers share, a writer is refused with the holders, a waiting writer is
// counted and holds back a later reader, and gets the lock by long poll
// once the readers leave; bad input gets its code.
func TestRWLocksMatchSpec(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{})
	r1 := s.do("POST", "/v1/rwlocks/spec.rw/acquire", `{"mode": "read", "ttl_ms": 30000, "owner": "r1"}`)
	s.want(r1, 200, "")
	r2 := s.do("POST", "/v1/rwlocks/spec.rw/acquire", `{"mode": "read", "ttl_ms": 30000, "owner": "r2"}`)
	s.want(r2, 200, "")
	if r1.json["mode"] != "read" || r1.json["key"] != "spec.rw" || r1.json["token"] == nil || r1.json["lease_id"] == r2.json["lease_id"] {
		t.Fatalf("read grants = %s, %s: want mode read, key spec.rw, a token and two lease ids", r1.body, r2.body)
	}
	refused := s.do("POST", "/v1/rwlocks/spec.rw/acquire", `{"mode": "write", "wait_ms": 100}`)
	s.want(refused, 409, "lock_held")
	if hs, _ := refused.json["holders"].([]any); len(hs) != 2 || hs[0].(map[string]any)["mode"] != "read" {
		t.Errorf("refused writer = %s, want the two readers as holders", refused.body)
	}

	// A writer waits (long poll), and holds back a later reader.
	type answer struct {
		status int
		body   map[string]any
	}
	writer := make(chan answer, 1)
	go func() {
		req, _ := http.NewRequest("POST", s.url+"/v1/rwlocks/spec.rw/acquire", strings.NewReader(`{"mode": "write", "wait_ms": 20000, "owner": "w"}`))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			writer <- answer{status: -1}
			return
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		writer <- answer{resp.StatusCode, m}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := s.do("GET", "/v1/rwlocks/spec.rw", "")
		s.want(st, 200, "")
		if w, _ := st.json["waiters"].(map[string]any); w["write"] == float64(1) {
			if st.json["mode"] != "read" || len(st.json["holders"].([]any)) != 2 || w["read"] != float64(0) {
				t.Errorf("inspect = %s, want mode read, two holders, no reader waiting", st.body)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("inspect = %s, want one writer waiting", st.body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.want(s.do("POST", "/v1/rwlocks/spec.rw/acquire", `{"mode": "read"}`), 409, "lock_held")

	renewed := s.do("POST", "/v1/rwlocks/spec.rw/renew", `{"lease_id": "`+r1.json["lease_id"].(string)+`", "ttl_ms": 20000}`)
	s.want(renewed, 200, "")
	if renewed.json["token"] != r1.json["token"] || renewed.json["mode"] != "read" || renewed.json["ttl_ms"] != float64(20000) {
		t.Errorf("renew = %s, want token %v, mode read, ttl_ms 20000", renewed.body, r1.json["token"])
	}
	for _, r := range []reply{r1, r2} {
		s.want(s.do("POST", "/v1/rwlocks/spec.rw/release", `{"lease_id": "`+r.json["lease_id"].(string)+`"}`), 204, "")
	}
	var w answer
	select {
	case w = <-writer:
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting writer got no answer within 10 s of the readers' release")
	}
	if w.status != 200 || w.body["mode"] != "write" || !(w.body["token"].(float64) > r2.json["token"].(float64)) {
		t.Fatalf("waiting writer = %d %v, want 200, mode write, a token above the readers'", w.status, w.body)
	}
	st := s.do("GET", "/v1/rwlocks/spec.rw", "")
	s.want(st, 200, "")
	if hs, _ := st.json["holders"].([]any); st.json["mode"] != "write" || len(hs) != 1 || hs[0].(map[string]any)["owner"] != "w" {
		t.Errorf("inspect = %s, want the writer holding", st.body)
	}
	// A lock of the same key is another thing.
	s.want(s.do("POST", "/v1/locks/spec.rw/acquire", `{}`), 200, "")
	s.want(s.do("POST", "/v1/locks/spec.rw/release", `{"lease_id": "`+r1.json["lease_id"].(string)+`"}`), 410, "lease_expired")

	leaseID := w.body["lease_id"].(string)
	bad := []struct {
		name, method, path, body string
		header                   http.Header
		status                   int
		code                     string
	}{
		{"no mode", "POST", "/v1/rwlocks/spec.x/acquire", `{}`, nil, 400, "invalid_mode"},
		{"bad mode", "POST", "/v1/rwlocks/spec.x/acquire", `{"mode": "upgrade"}`, nil, 400, "invalid_mode"},
		{"mode not a string", "POST", "/v1/rwlocks/spec.x/acquire", `{"mode": 1}`, nil, 400, "invalid_mode"},
		{"short ttl", "POST", "/v1/rwlocks/spec.x/acquire", `{"mode": "read", "ttl_ms": 99}`, nil, 400, "invalid_ttl_ms"},
		{"unknown field", "POST", "/v1/rwlocks/spec.x/acquire", `{"mode": "read", "slot": 1}`, nil, 400, "unknown_field"},
		{"bad key", "POST", "/v1/rwlocks/-x/acquire", `{"mode": "read"}`, nil, 400, "invalid_key"},
		{"dead session", "POST", "/v1/rwlocks/spec.x/acquire", `{"mode": "read", "session_id": "s"}`, nil, 410, "session_expired"},
		{"idempotency key", "POST", "/v1/rwlocks/spec.x/acquire", `{"mode": "read"}`, http.Header{"Idempotency-Key": {"k1"}}, 501, "idempotency_unsupported"},
		{"renew unknown", "POST", "/v1/rwlocks/spec.rw/renew", `{"lease_id": "AAAAAAAAAAAAAAAAAAAAAA"}`, nil, 410, "lease_expired"},
		{"renew short ttl", "POST", "/v1/rwlocks/spec.rw/renew", `{"lease_id": "` + leaseID + `", "ttl_ms": 50}`, nil, 400, "invalid_ttl_ms"},
		{"renew other key", "POST", "/v1/rwlocks/spec.other/renew", `{"lease_id": "` + leaseID + `"}`, nil, 410, "lease_expired"},
		{"release released", "POST", "/v1/rwlocks/spec.rw/release", `{"lease_id": "` + r1.json["lease_id"].(string) + `"}`, nil, 410, "lease_expired"},
		{"release no lease", "POST", "/v1/rwlocks/spec.rw/release", `{}`, nil, 400, "invalid_lease_id"},
		{"inspect bad key", "GET", "/v1/rwlocks/spec!x", ``, nil, 400, "invalid_key"},
	}
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			s.t = t
			s.want(s.doWith("", b.header, b.method, b.path, b.body), b.status, b.code)
		})
	}
	s.t = t
	s.want(s.do("POST", "/v1/rwlocks/spec.rw/release", `{"lease_id": "`+leaseID+`"}`), 204, "")
	st = s.do("GET", "/v1/rwlocks/spec.rw", "")
	s.want(st, 200, "")
	if _, ok := st.json["mode"]; ok || len(st.json["holders"].([]any)) != 0 {
		t.Errorf("inspect of a free rwlock = %s, want no mode and no holders", st.body)
	}
}

// A backend without read-write locks answers 501 not_supported on every
// rwlock route, and shows rwlocks null in its capabilities; etcd shows them
// fair, woken by watch.
func TestRWLocksNotSupported(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{})
	c := s.do("GET", "/v1/capabilities", "")
	s.want(c, 200, "")
	if rw, _ := c.json["features"].(map[string]any)["rwlocks"].(map[string]any); rw["fair"] != true || rw["wakeup"] != "watch" || rw["sessions"] != true {
		t.Errorf("etcd capabilities = %s, want rwlocks {fair: true, wakeup: watch, sessions: true}", c.body)
	}
	if _, ok := c.json["features"].(map[string]any)[backend.FeatureRWLocks]; !ok {
		t.Errorf("backend.FeatureRWLocks %q is not a feature in %s", backend.FeatureRWLocks, c.body)
	}

	plain := reasoned{struct{ backend.Backend }{etcdBackend(t)}, map[string]string{backend.FeatureRWLocks: "no queue"}}
	ts := httptest.NewServer(httpapi.New(plain, httpapi.Options{Backend: "plain"}))
	t.Cleanup(ts.Close)
	resp, err := ts.Client().Get(ts.URL + "/v1/capabilities")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Features    map[string]json.RawMessage `json:"features"`
		Unsupported map[string]string          `json:"unsupported"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&got)
	resp.Body.Close()
	if string(got.Features["rwlocks"]) != "null" || got.Unsupported["rwlocks"] != "no queue" {
		t.Errorf("capabilities without rwlocks = rwlocks %s, unsupported %v; want null and the reason", got.Features["rwlocks"], got.Unsupported)
	}
	for _, rt := range []struct{ method, path, body string }{
		{"POST", "/v1/rwlocks/k/acquire", `{"mode": "read"}`},
		{"POST", "/v1/rwlocks/k/renew", `{"lease_id": "AAAAAAAAAAAAAAAAAAAAAA"}`},
		{"POST", "/v1/rwlocks/k/release", `{"lease_id": "AAAAAAAAAAAAAAAAAAAAAA"}`},
		{"GET", "/v1/rwlocks/k", ``},
	} {
		req, _ := http.NewRequest(rt.method, ts.URL+rt.path, strings.NewReader(rt.body))
		resp, err := ts.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var p struct{ Code string }
		_ = json.NewDecoder(resp.Body).Decode(&p)
		resp.Body.Close()
		if resp.StatusCode != 501 || p.Code != "not_supported" {
			t.Errorf("%s %s without rwlocks: %d %q, want 501 not_supported", rt.method, rt.path, resp.StatusCode, p.Code)
		}
	}
}

// Rights and prefixes hold on rwlock keys as on lock keys: lock to
// acquire, renew and release, read to inspect, only under the token's
// prefixes.
func TestRWLockRights(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{Auth: authStore(t)})
	a := s.doAs(tokA, "POST", "/v1/rwlocks/a:rw/acquire", `{"mode": "write"}`)
	s.want(a, 200, "")
	lease := `{"lease_id": "` + a.json["lease_id"].(string) + `"}`
	for _, c := range []struct {
		token, method, path, body string
		status                    int
	}{
		{tokA, "POST", "/v1/rwlocks/b:rw/acquire", `{"mode": "read"}`, 403},
		{tokA, "GET", "/v1/rwlocks/b:rw", ``, 403},
		{tokReader, "POST", "/v1/rwlocks/a:rw/acquire", `{"mode": "read"}`, 403},
		{tokReader, "POST", "/v1/rwlocks/a:rw/renew", lease, 403},
		{tokReader, "POST", "/v1/rwlocks/a:rw/release", lease, 403},
		{tokReader, "GET", "/v1/rwlocks/a:rw", ``, 200},
		{"", "GET", "/v1/rwlocks/a:rw", ``, 401},
		{tokA, "POST", "/v1/rwlocks/a:rw/renew", lease, 200},
		{tokA, "POST", "/v1/rwlocks/a:rw/release", lease, 204},
	} {
		s.want(s.doAs(c.token, c.method, c.path, c.body), c.status, "")
	}
}

// noRWSessions is a real backend whose read-write locks say they do not
// live in sessions, though it keeps sessions.
type noRWSessions struct{ *etcdb.Backend }

func (b noRWSessions) RWLocks() backend.RWLocks { return rwNoSessions{b.Backend.RWLocks()} }

type rwNoSessions struct{ backend.RWLocks }

func (r rwNoSessions) Features() backend.RWFeatures {
	f := r.RWLocks.Features()
	f.Sessions = false
	return f
}

// An rwlock acquire naming a session on a backend whose rwlocks do not live
// in sessions is refused with 501 before the backend sees it.
func TestRWLockSessionNotSupported(t *testing.T) {
	b := noRWSessions{etcdBackend(t)}
	ts := httptest.NewServer(httpapi.New(b, httpapi.Options{Backend: "etcd"}))
	t.Cleanup(ts.Close)
	sess, err := b.Sessions().Open(t.Context(), "o", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ts.Client().Post(ts.URL+"/v1/rwlocks/k/acquire", "application/json", strings.NewReader(`{"mode": "read", "session_id": "`+sess.ID+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	var p struct{ Code string }
	_ = json.NewDecoder(resp.Body).Decode(&p)
	resp.Body.Close()
	if resp.StatusCode != 501 || p.Code != "not_supported" {
		t.Errorf("rwlock acquire in a session without RW sessions: %d %q, want 501 not_supported", resp.StatusCode, p.Code)
	}
}
