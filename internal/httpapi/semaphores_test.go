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
	"github.com/lockd/lockd/internal/testserver"
)

// Every semaphore answer, over real etcd, matches the spec: grants with
// distinct slots, a give-up naming the holders, a size mismatch naming the
// current size, every bad input as a 4xx with its code, renew and release
// as for locks, and inspection without lease ids.
func TestSemaphoresMatchSpec(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{})
	a := s.do("POST", "/v1/semaphores/spec.s/acquire", `{"permits": 2, "ttl_ms": 30000, "owner": "a"}`)
	s.want(a, 200, "")
	b := s.do("POST", "/v1/semaphores/spec.s/acquire", `{"permits": 2, "ttl_ms": 30000, "owner": "b"}`)
	s.want(b, 200, "")
	if a.json["key"] != "spec.s" || a.json["permits"] != float64(2) || a.json["slot"] == b.json["slot"] || b.json["token"].(float64) <= a.json["token"].(float64) {
		t.Fatalf("grants %s and %s, want key spec.s, permits 2, two slots and increasing tokens", a.body, b.body)
	}
	aLease, bLease := a.json["lease_id"].(string), b.json["lease_id"].(string)

	full := s.do("POST", "/v1/semaphores/spec.s/acquire", `{"permits": 2, "owner": "c", "wait_ms": 100}`)
	s.want(full, 409, "lock_held")
	if hs, _ := full.json["holders"].([]any); len(hs) != 2 {
		t.Errorf("refused acquire = %s, want the 2 holders", full.body)
	}
	if strings.Contains(string(full.body), aLease) || strings.Contains(string(full.body), bLease) {
		t.Errorf("a refused acquire shows a lease id: %s", full.body)
	}
	mismatch := s.do("POST", "/v1/semaphores/spec.s/acquire", `{"permits": 3}`)
	s.want(mismatch, 409, "permits_mismatch")
	if mismatch.json["permits"] != float64(2) {
		t.Errorf("mismatch = %s, want the current permits 2", mismatch.body)
	}

	bad := []struct {
		method, path, body string
		h                  http.Header
		status             int
		code               string
	}{
		{"POST", "/v1/semaphores/spec.x/acquire", `{}`, nil, 400, "invalid_permits"},
		{"POST", "/v1/semaphores/spec.x/acquire", `{"permits": 0}`, nil, 400, "invalid_permits"},
		{"POST", "/v1/semaphores/spec.x/acquire", `{"permits": 10001}`, nil, 400, "invalid_permits"},
		{"POST", "/v1/semaphores/spec.x/acquire", `{"permits": 1.5}`, nil, 400, "invalid_permits"},
		{"POST", "/v1/semaphores/spec.x/acquire", `{"permits": "2"}`, nil, 400, "invalid_permits"},
		{"POST", "/v1/semaphores/spec.x/acquire", `{"permits": 2, "ttl_ms": 99}`, nil, 400, "invalid_ttl_ms"},
		{"POST", "/v1/semaphores/spec.x/acquire", `{"permits": 2, "ttl_ms": 1000, "session_id": "s"}`, nil, 400, "invalid_session_id"},
		{"POST", "/v1/semaphores/spec.x/acquire", `{"permits": 2, "session_id": "s"}`, nil, 410, "session_expired"},
		{"POST", "/v1/semaphores/spec.x/acquire", `{"permits": 2, "count": 1}`, nil, 400, "unknown_field"},
		{"POST", "/v1/semaphores/spec.x/acquire", `{"permits": 2}`, http.Header{"Idempotency-Key": {`"k1"`}}, 501, "idempotency_unsupported"},
		{"POST", "/v1/semaphores/-x/acquire", `{"permits": 2}`, nil, 400, "invalid_key"},
		{"POST", "/v1/semaphores/spec.s/renew", `{}`, nil, 400, "invalid_lease_id"},
		{"POST", "/v1/semaphores/spec.s/renew", `{"lease_id": "` + aLease + `", "ttl_ms": 50}`, nil, 400, "invalid_ttl_ms"},
		{"POST", "/v1/semaphores/spec.s/renew", `{"lease_id": "AAAAAAAAAAAAAAAAAAAAAA.0"}`, nil, 410, "lease_expired"},
		{"POST", "/v1/semaphores/spec.other/renew", `{"lease_id": "` + aLease + `"}`, nil, 410, "lease_expired"},
		{"POST", "/v1/semaphores/spec.s/release", `{"lease_id": "AAAAAAAAAAAAAAAAAAAAAA"}`, nil, 410, "lease_expired"},
		{"POST", "/v1/locks/spec.s/release", `{"lease_id": "` + aLease + `"}`, nil, 410, "lease_expired"},
		{"GET", "/v1/semaphores/spec!x", ``, nil, 400, "invalid_key"},
	}
	for _, c := range bad {
		t.Run(c.code, func(t *testing.T) {
			s.t = t
			s.want(s.doWith("", c.h, c.method, c.path, c.body), c.status, c.code)
		})
	}
	s.t = t

	// A lock of the same key is another thing.
	s.want(s.do("POST", "/v1/locks/spec.s/acquire", `{}`), 200, "")
	r := s.do("POST", "/v1/semaphores/spec.s/renew", `{"lease_id": "`+aLease+`", "ttl_ms": 20000}`)
	s.want(r, 200, "")
	if r.json["token"] != a.json["token"] || r.json["slot"] != a.json["slot"] || r.json["ttl_ms"] != float64(20000) {
		t.Errorf("renew = %s, want token %v slot %v ttl_ms 20000", r.body, a.json["token"], a.json["slot"])
	}
	st := s.do("GET", "/v1/semaphores/spec.s", "")
	s.want(st, 200, "")
	if hs, _ := st.json["holders"].([]any); len(hs) != 2 || st.json["permits"] != float64(2) || st.json["waiters"] != float64(0) {
		t.Errorf("inspect = %s, want permits 2, 2 holders, no waiters", st.body)
	}
	if strings.Contains(string(st.body), aLease) {
		t.Errorf("inspection shows a lease id: %s", st.body)
	}
	s.want(s.do("POST", "/v1/semaphores/spec.s/release", `{"lease_id": "`+aLease+`"}`), 204, "")
	s.want(s.do("POST", "/v1/semaphores/spec.s/release", `{"lease_id": "`+aLease+`"}`), 410, "lease_expired")
	s.want(s.do("POST", "/v1/semaphores/spec.s/release", `{"lease_id": "`+bLease+`"}`), 204, "")
	st = s.do("GET", "/v1/semaphores/spec.s", "")
	s.want(st, 200, "")
	if hs, _ := st.json["holders"].([]any); len(hs) != 0 || st.json["permits"] != float64(0) {
		t.Errorf("inspect after both releases = %s, want an empty semaphore", st.body)
	}
	// Empty, it takes a new size.
	s.want(s.do("POST", "/v1/semaphores/spec.s/acquire", `{"permits": 5}`), 200, "")
	caps := s.do("GET", "/v1/capabilities", "")
	s.want(caps, 200, "")
	if f, _ := caps.json["features"].(map[string]any); f["semaphores"] == nil {
		t.Errorf("capabilities = %s, want semaphores", caps.body)
	}
}

// A long poll is granted a permit as soon as a holder releases one, and a
// waiter whose wait runs out gets 409 with the holders.
func TestSemaphoreLongPoll(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{})
	h := s.do("POST", "/v1/semaphores/spec.lp/acquire", `{"permits": 1, "ttl_ms": 30000, "owner": "h"}`)
	s.want(h, 200, "")
	got := make(chan reply, 1)
	go func() {
		resp, err := http.Post(s.url+"/v1/semaphores/spec.lp/acquire", "application/json", strings.NewReader(`{"permits": 1, "wait_ms": 20000, "owner": "w"}`))
		if err != nil {
			got <- reply{status: -1}
			return
		}
		defer resp.Body.Close()
		var m map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&m)
		got <- reply{status: resp.StatusCode, json: m}
	}()
	for deadline := time.Now().Add(10 * time.Second); ; {
		st := s.do("GET", "/v1/semaphores/spec.lp", "")
		if st.json["waiters"] == float64(1) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the long poll never queued: %s", st.body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.want(s.do("POST", "/v1/semaphores/spec.lp/release", `{"lease_id": "`+h.json["lease_id"].(string)+`"}`), 204, "")
	select {
	case r := <-got:
		if r.status != 200 || r.json["owner"] != "w" || r.json["token"].(float64) <= h.json["token"].(float64) {
			t.Fatalf("long poll = %d %v, want 200 for w with a greater token", r.status, r.json)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the long poll was not granted within 10s of the release")
	}
}

// Rights and prefixes apply to semaphore keys: lock to acquire, renew and
// release; read to inspect.
func TestSemaphoreRights(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{Auth: authStore(t)})
	b := s.doAs(tokAdmin, "POST", "/v1/semaphores/b:s/acquire", `{"permits": 2, "owner": "tenant-b"}`)
	s.want(b, 200, "")
	bLease := b.json["lease_id"].(string)
	cases := []struct {
		token, method, path, body string
		status                    int
		code                      string
	}{
		{"", "POST", "/v1/semaphores/a:s/acquire", `{"permits": 2}`, 401, "unauthorized"},
		{"", "GET", "/v1/semaphores/a:s", ``, 401, "unauthorized"},
		{tokA, "POST", "/v1/semaphores/b:y/acquire", `{"permits": 2}`, 403, "forbidden"},
		{tokA, "POST", "/v1/semaphores/b:s/renew", `{"lease_id": "` + bLease + `"}`, 403, "forbidden"},
		{tokA, "POST", "/v1/semaphores/b:s/release", `{"lease_id": "` + bLease + `"}`, 403, "forbidden"},
		{tokA, "GET", "/v1/semaphores/b:s", ``, 403, "forbidden"},
		{tokA, "POST", "/v1/semaphores/a:s/release", `{"lease_id": "` + bLease + `"}`, 410, "lease_expired"},
		{tokReader, "POST", "/v1/semaphores/a:s/acquire", `{"permits": 2}`, 403, "forbidden"},
		{tokReader, "GET", "/v1/semaphores/a:s", ``, 200, ""},
		{tokA, "POST", "/v1/semaphores/a:s/acquire", `{"permits": 2}`, 200, ""},
	}
	for _, c := range cases {
		r := s.doAs(c.token, c.method, c.path, c.body)
		if r.status != c.status || (c.code != "" && r.json["code"] != c.code) {
			t.Errorf("%s %s as %q: %d %s, want %d %s", c.method, c.path, c.token, r.status, r.body, c.status, c.code)
		}
	}
	if st := s.doAs(tokAdmin, "GET", "/v1/semaphores/b:s", ""); len(st.json["holders"].([]any)) != 1 {
		t.Errorf("b:s after the refused calls: %s, want still held", st.body)
	}
}

// A backend without semaphores shows them null and answers 501
// not_supported on every semaphore route.
func TestSemaphoresNotSupported(t *testing.T) {
	plain := struct{ backend.Backend }{etcdBackend(t)}
	ts := httptest.NewServer(httpapi.New(plain, httpapi.Options{Backend: "plain"}))
	t.Cleanup(ts.Close)
	resp, err := ts.Client().Get(ts.URL + "/v1/capabilities")
	if err != nil {
		t.Fatal(err)
	}
	var caps struct {
		Features map[string]json.RawMessage `json:"features"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&caps)
	resp.Body.Close()
	if string(caps.Features[backend.FeatureSemaphores]) != "null" {
		t.Errorf("capabilities semaphores = %s, want null", caps.Features[backend.FeatureSemaphores])
	}
	for _, c := range []struct{ method, path, body string }{
		{"POST", "/v1/semaphores/s1/acquire", `{"permits": 2}`},
		{"POST", "/v1/semaphores/s1/renew", `{"lease_id": "AAAAAAAAAAAAAAAAAAAAAA.0"}`},
		{"POST", "/v1/semaphores/s1/release", `{"lease_id": "AAAAAAAAAAAAAAAAAAAAAA.0"}`},
		{"GET", "/v1/semaphores/s1", ``},
	} {
		req, _ := http.NewRequest(c.method, ts.URL+c.path, strings.NewReader(c.body))
		resp, err := ts.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var p struct{ Code string }
		_ = json.NewDecoder(resp.Body).Decode(&p)
		resp.Body.Close()
		if resp.StatusCode != 501 || p.Code != "not_supported" {
			t.Errorf("%s %s without semaphores: %d %q, want 501 not_supported", c.method, c.path, resp.StatusCode, p.Code)
		}
	}
}

// noSessionPermits is the real etcd backend whose semaphores say they take
// no sessions (as Redis's do).
type noSessionPermits struct{ backend.Semaphores }

func (n noSessionPermits) Features() backend.SemaphoreFeatures {
	f := n.Semaphores.Features()
	f.Sessions = false
	return f
}

type noSessionPermitsBackend struct {
	*etcdb.Backend
}

func (b noSessionPermitsBackend) Semaphores() backend.Semaphores {
	return noSessionPermits{b.Backend.Semaphores()}
}

// A backend whose permits cannot live in a session says so in the
// capabilities and refuses session_id with 501, though it has sessions.
func TestSemaphoreSessionsNotSupported(t *testing.T) {
	e := testserver.EtcdCluster(t, 1)
	s := newSpecServerOver(t, e, noSessionPermitsBackend{etcdOn(t, e.Endpoints(), etcdb.Options{})}, httpapi.Options{})
	caps := s.do("GET", "/v1/capabilities", "")
	s.want(caps, 200, "")
	if f, _ := caps.json["features"].(map[string]any); f["semaphores"].(map[string]any)["sessions"] != false || f["sessions"] == nil {
		t.Fatalf("capabilities = %s, want sessions, and semaphores without them", caps.body)
	}
	sess := s.do("POST", "/v1/sessions", `{"ttl_ms": 10000}`)
	s.want(sess, 201, "")
	s.want(s.do("POST", "/v1/semaphores/spec.ns/acquire", `{"permits": 2, "session_id": "`+sess.json["session_id"].(string)+`"}`), 501, "not_supported")
	s.want(s.do("POST", "/v1/semaphores/spec.ns/acquire", `{"permits": 2}`), 200, "")
}
