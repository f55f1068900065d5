package httpapi_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/httpapi"
)

// A session over real etcd, end to end: its grants show its deadline, one
// renew extends them, a direct renew is refused, close frees them at once,
// and every answer matches the spec.
func TestSessionsMatchSpec(t *testing.T) {
	var audit bytes.Buffer
	s := newSpecServer(t, httpapi.Options{Audit: slog.New(slog.NewJSONHandler(&audit, nil))})
	open := s.do("POST", "/v1/sessions", `{"ttl_ms": 30000, "owner": "svc"}`)
	s.want(open, 201, "")
	id, _ := open.json["session_id"].(string)
	if len(id) < 22 || open.json["owner"] != "svc" || open.json["ttl_ms"] != float64(30000) {
		t.Fatalf("open = %s, want a session id, owner svc, ttl_ms 30000", open.body)
	}
	g := s.do("POST", "/v1/locks/sess.a/acquire", `{"session_id": "`+id+`", "owner": "a"}`)
	s.want(g, 200, "")
	if g.json["expires_at"] != open.json["expires_at"] || g.json["ttl_ms"] != float64(30000) || g.json["lease_id"] == id {
		t.Fatalf("grant = %s, want the session's expires_at %v and ttl_ms, and a lease id of its own", g.body, open.json["expires_at"])
	}
	lid := g.json["lease_id"].(string)
	l := s.do("POST", "/v1/elections/sess.e/campaign", `{"session_id": "`+id+`", "owner": "a", "value": "v"}`)
	s.want(l, 200, "")
	if l.json["expires_at"] != open.json["expires_at"] {
		t.Errorf("leadership = %s, want the session's expires_at %v", l.body, open.json["expires_at"])
	}

	bad := []struct {
		method, path, body string
		status             int
		code               string
	}{
		{"POST", "/v1/locks/sess.b/acquire", `{"ttl_ms": 1000, "session_id": "` + id + `"}`, 400, "invalid_session_id"},
		{"POST", "/v1/locks/sess.b/acquire", `{"session_id": "a/b"}`, 400, "invalid_session_id"},
		{"POST", "/v1/locks/sess.b/acquire", `{"session_id": ""}`, 400, "invalid_session_id"},
		{"POST", "/v1/locks/sess.b/acquire", `{"session_id": "AAAAAAAAAAAAAAAAAAAAAA"}`, 410, "session_expired"},
		{"POST", "/v1/elections/sess.x/campaign", `{"ttl_ms": 1000, "session_id": "` + id + `"}`, 400, "invalid_session_id"},
		{"POST", "/v1/locks/sess.a/renew", `{"lease_id": "` + lid + `"}`, 409, "session_bound"},
		{"POST", "/v1/elections/sess.e/renew", `{"lease_id": "` + l.json["lease_id"].(string) + `"}`, 409, "session_bound"},
		{"POST", "/v1/sessions", `{"ttl_ms": 50}`, 400, "invalid_ttl_ms"},
		{"POST", "/v1/sessions", `{"session_id": "x"}`, 400, "unknown_field"},
		{"POST", "/v1/sessions/renew", `{}`, 400, "invalid_session_id"},
		{"POST", "/v1/sessions/renew", `{"session_id": "AAAAAAAAAAAAAAAAAAAAAA"}`, 410, "session_expired"},
		{"POST", "/v1/sessions/close", `{"session_id": "AAAAAAAAAAAAAAAAAAAAAA"}`, 410, "session_expired"},
	}
	for _, b := range bad {
		t.Run(b.code, func(t *testing.T) {
			s.t = t
			s.want(s.do(b.method, b.path, b.body), b.status, b.code)
		})
	}
	s.t = t

	r := s.do("POST", "/v1/sessions/renew", `{"session_id": "`+id+`", "ttl_ms": 60000}`)
	s.want(r, 200, "")
	if r.json["session_id"] != id || r.json["ttl_ms"] != float64(60000) {
		t.Fatalf("renew = %s, want the same id and ttl_ms 60000", r.body)
	}
	in := s.do("GET", "/v1/locks/sess.a", "")
	s.want(in, 200, "")
	if in.json["held"] != true || in.json["expires_at"] != r.json["expires_at"] {
		t.Errorf("inspect = %s, want held until the renewed %v", in.body, r.json["expires_at"])
	}

	s.want(s.do("POST", "/v1/sessions/close", `{"session_id": "`+id+`"}`), 204, "")
	in = s.do("GET", "/v1/locks/sess.a", "")
	if in.json["held"] != false {
		t.Errorf("inspect after close = %s, want not held", in.body)
	}
	st := s.do("GET", "/v1/elections/sess.e", "")
	if _, led := st.json["leader"]; led {
		t.Errorf("election after close = %s, want no leader", st.body)
	}
	s.want(s.do("POST", "/v1/locks/sess.a/release", `{"lease_id": "`+lid+`"}`), 410, "lease_expired")
	s.want(s.do("POST", "/v1/sessions/renew", `{"session_id": "`+id+`"}`), 410, "session_expired")
	s.want(s.do("POST", "/v1/sessions/close", `{"session_id": "`+id+`"}`), 410, "session_expired")
	s.want(s.do("POST", "/v1/locks/sess.c/acquire", `{"session_id": "`+id+`"}`), 410, "session_expired")

	m := s.do("GET", "/metrics", "")
	for _, want := range []string{
		`lockd_session_duration_seconds_count{backend="etcd",op="open",outcome="ok"} 1`,
		`lockd_session_duration_seconds_count{backend="etcd",op="renew",outcome="expired"} 2`,
		`lockd_session_duration_seconds_count{backend="etcd",op="close",outcome="ok"} 1`,
	} {
		if !strings.Contains(string(m.body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(audit.String(), id) {
		t.Errorf("the audit log shows a session id: %s", audit.String())
	}
	if !strings.Contains(audit.String(), `"event":"session_open"`) || !strings.Contains(audit.String(), `"event":"session_close"`) {
		t.Errorf("audit = %s, want session_open and session_close lines", audit.String())
	}
}

// A session waiter's long poll ends with 410 session_expired when its
// session runs out, over HTTP.
func TestSessionWaiterLongPollEnds(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{})
	s.want(s.do("POST", "/v1/locks/sess.w/acquire", `{"ttl_ms": 60000}`), 200, "")
	open := s.do("POST", "/v1/sessions", `{"ttl_ms": 1000}`)
	s.want(open, 201, "")
	w := s.do("POST", "/v1/locks/sess.w/acquire", `{"session_id": "`+open.json["session_id"].(string)+`", "wait_ms": 30000}`)
	s.want(w, 410, "session_expired")
}

// Rights apply to the session's owner: a tenant opens, renews and closes
// sessions only under its prefixes.
func TestSessionRights(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{Auth: authStore(t)})
	s.want(s.doAs(tokA, "POST", "/v1/sessions", `{"owner": "b:svc"}`), 403, "forbidden")
	s.want(s.doAs(tokReader, "POST", "/v1/sessions", `{"owner": "a:svc"}`), 403, "forbidden")
	b := s.doAs(tokAdmin, "POST", "/v1/sessions", `{"owner": "b:svc"}`)
	s.want(b, 201, "")
	bid := b.json["session_id"].(string)
	s.want(s.doAs(tokA, "POST", "/v1/sessions/renew", `{"session_id": "`+bid+`"}`), 403, "forbidden")
	s.want(s.doAs(tokA, "POST", "/v1/sessions/close", `{"session_id": "`+bid+`"}`), 403, "forbidden")
	a := s.doAs(tokA, "POST", "/v1/sessions", `{"owner": "a:svc"}`)
	s.want(a, 201, "")
	aid := a.json["session_id"].(string)
	s.want(s.doAs(tokA, "POST", "/v1/sessions/renew", `{"session_id": "`+aid+`"}`), 200, "")
	s.want(s.doAs(tokA, "POST", "/v1/locks/a:s/acquire", `{"session_id": "`+aid+`"}`), 200, "")
	s.want(s.doAs(tokA, "POST", "/v1/sessions/close", `{"session_id": "`+aid+`"}`), 204, "")
	s.want(s.doAs(tokAdmin, "POST", "/v1/sessions/close", `{"session_id": "`+bid+`"}`), 204, "")
}

// Capabilities show sessions on etcd; a backend without them shows null and
// answers 501 on the session routes and on session_id.
func TestSessionsCapability(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{})
	c := s.do("GET", "/v1/capabilities", "")
	if f, _ := c.json["features"].(map[string]any); f["sessions"] == nil || f["sessions"].(map[string]any)["expiry"] != "store" {
		t.Errorf("etcd capabilities = %s, want sessions {expiry: store}", c.body)
	}
	plain := struct{ backend.Backend }{etcdBackend(t)}
	ts := httptest.NewServer(httpapi.New(plain, httpapi.Options{Backend: "plain"}))
	t.Cleanup(ts.Close)
	resp, err := ts.Client().Get(ts.URL + "/v1/capabilities")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Features map[string]json.RawMessage `json:"features"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&got)
	resp.Body.Close()
	if string(got.Features["sessions"]) != "null" {
		t.Errorf("sessions = %s, want null", got.Features["sessions"])
	}
	for path, body := range map[string]string{
		"/v1/sessions": `{}`, "/v1/sessions/renew": `{}`, "/v1/sessions/close": `{}`,
		"/v1/locks/k/acquire": `{"session_id": "AAAAAAAAAAAAAAAAAAAAAA"}`,
	} {
		resp, err := ts.Client().Post(ts.URL+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		var p struct{ Code string }
		_ = json.NewDecoder(resp.Body).Decode(&p)
		resp.Body.Close()
		if resp.StatusCode != 501 || p.Code != "not_supported" {
			t.Errorf("POST %s without sessions: %d %q, want 501 not_supported", path, resp.StatusCode, p.Code)
		}
	}
}
