package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/lockd/lockd/backend"
	etcdb "github.com/lockd/lockd/backend/etcd"
	"github.com/lockd/lockd/internal/httpapi"
	"github.com/lockd/lockd/internal/testserver"
)

// specServer is a real lockd (the HTTP API over the etcd backend on an
// embedded etcd) whose every response is checked against api/openapi.yaml.
type specServer struct {
	t      *testing.T
	url    string
	api    *httpapi.Server
	etcd   *testserver.Etcd
	doc    *openapi3.T
	router routers.Router
}

func newSpecServer(t *testing.T, opts httpapi.Options) *specServer {
	t.Helper()
	e := testserver.EtcdCluster(t, 1)
	return newSpecServerOver(t, e, etcdOn(t, e.Endpoints(), etcdb.Options{OpTimeout: 2 * time.Second}), opts)
}

// etcdOn is the real etcd backend over the etcd at endpoints, with its own
// client; both close with tb. Two calls are two lockd replicas.
func etcdOn(tb testing.TB, endpoints []string, opts etcdb.Options) *etcdb.Backend {
	tb.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cli.Close() })
	b := etcdb.New(cli, opts)
	tb.Cleanup(func() { b.Close() })
	return b
}

// newSpecServerOver is a specServer over b, a backend on e.
func newSpecServerOver(t *testing.T, e *testserver.Etcd, b backend.Backend, opts httpapi.Options) *specServer {
	t.Helper()
	opts.Backend = "etcd"
	api := httpapi.New(b, opts)
	ts := httptest.NewServer(api)
	t.Cleanup(ts.Close)

	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile("../../api/openapi.yaml")
	if err != nil {
		t.Fatalf("load spec: %v", err)
	}
	if err := doc.Validate(loader.Context); err != nil {
		t.Fatalf("the spec itself is invalid: %v", err)
	}
	doc.Servers = openapi3.Servers{{URL: ts.URL}}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	return &specServer{t: t, url: ts.URL, api: api, etcd: e, doc: doc, router: router}
}

type reply struct {
	status int
	header http.Header
	body   []byte
	json   map[string]any
}

// do sends a request and validates the response against the spec: its
// status must be documented for the operation and its body must match.
func (s *specServer) do(method, path, body string) reply {
	s.t.Helper()
	return s.doAs("", method, path, body)
}

// doAs is do with a bearer token.
func (s *specServer) doAs(token, method, path, body string) reply {
	s.t.Helper()
	return s.doWith(token, nil, method, path, body)
}

// doWith is doAs with extra request headers.
func (s *specServer) doWith(token string, h http.Header, method, path, body string) reply {
	s.t.Helper()
	req, err := http.NewRequest(method, s.url+path, strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	for k, vs := range h {
		req.Header[k] = vs
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	r := reply{status: resp.StatusCode, header: resp.Header, body: data}
	if ct := resp.Header.Get("Content-Type"); strings.Contains(ct, "json") {
		if err := json.Unmarshal(data, &r.json); err != nil {
			s.t.Fatalf("%s %s: body is not JSON: %q", method, path, data)
		}
	}
	route, params, err := s.router.FindRoute(req)
	if err != nil {
		// Not an operation of the spec (404/405): still a problem.
		s.checkProblem(method, path, r, resp.Header.Get("Content-Type"))
		return r
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
			Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}},
		Status:  resp.StatusCode,
		Header:  resp.Header,
		Body:    io.NopCloser(bytes.NewReader(data)),
		Options: &openapi3filter.Options{IncludeResponseStatus: true},
	}
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		s.t.Errorf("%s %s → %d %s: does not match the spec: %v", method, path, resp.StatusCode, data, err)
	}
	return r
}

func (s *specServer) checkProblem(method, path string, r reply, ct string) {
	s.t.Helper()
	if ct != "application/problem+json" {
		s.t.Errorf("%s %s → %d with Content-Type %q, want application/problem+json", method, path, r.status, ct)
	}
	schema := s.doc.Components.Schemas["Problem"].Value
	var v any
	_ = json.Unmarshal(r.body, &v)
	if err := schema.VisitJSON(v); err != nil {
		s.t.Errorf("%s %s → %d %s: not a Problem: %v", method, path, r.status, r.body, err)
	}
}

func (s *specServer) want(r reply, status int, code string) {
	s.t.Helper()
	if r.status != status {
		s.t.Errorf("status %d (%s), want %d", r.status, r.body, status)
	}
	if code != "" && r.json["code"] != code {
		s.t.Errorf("code %v (%s), want %q", r.json["code"], r.body, code)
	}
}

func TestResponsesMatchSpec(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{})

	held := s.do("POST", "/v1/locks/spec.held/acquire", `{"ttl_ms": 30000, "owner": "holder"}`)
	s.want(held, 200, "")
	leaseID, _ := held.json["lease_id"].(string)
	token := held.json["token"]

	// Everything a caller can get wrong: a clear 4xx naming the field, and
	// the holder's lock untouched.
	bad := []struct {
		method, path, body string
		status             int
		code               string
	}{
		{"POST", "/v1/locks/spec.held/acquire", `{}`, 409, "lock_held"},
		{"POST", "/v1/locks/spec.held/acquire", `{"wait_ms": 200}`, 409, "lock_held"},
		{"POST", "/v1/locks/spec.x/acquire", `{"ttl_ms": 99}`, 400, "invalid_ttl_ms"},
		{"POST", "/v1/locks/spec.x/acquire", `{"ttl_ms": 3600001}`, 400, "invalid_ttl_ms"},
		{"POST", "/v1/locks/spec.x/acquire", `{"ttl_ms": 1.5}`, 400, "invalid_ttl_ms"},
		{"POST", "/v1/locks/spec.x/acquire", `{"ttl_ms": "1000"}`, 400, "invalid_ttl_ms"},
		{"POST", "/v1/locks/spec.x/acquire", `{"ttl_ms": 99999999999999999999999}`, 400, "invalid_ttl_ms"},
		{"POST", "/v1/locks/spec.x/acquire", `{"wait_ms": -1}`, 400, "invalid_wait_ms"},
		{"POST", "/v1/locks/spec.x/acquire", `{"wait_ms": 300001}`, 400, "invalid_wait_ms"},
		{"POST", "/v1/locks/spec.x/acquire", `{"owner": 7}`, 400, "invalid_owner"},
		{"POST", "/v1/locks/spec.x/acquire", `{"owner": "` + strings.Repeat("o", 257) + `"}`, 400, "invalid_owner"},
		{"POST", "/v1/locks/spec.x/acquire", `{"ttl": 1000}`, 400, "unknown_field"},
		{"POST", "/v1/locks/spec.x/acquire", `{"TTL_MS": 1000}`, 400, "unknown_field"},
		{"POST", "/v1/locks/spec.x/acquire", `{"owner": "a", "owner": "b"}`, 400, "invalid_json"},
		{"POST", "/v1/locks/spec.x/acquire", `{"ttl_ms": 1000.5}`, 400, "invalid_ttl_ms"},
		{"POST", "/v1/locks/spec.x/acquire", `{"ttl_ms": 1000`, 400, "invalid_json"},
		{"POST", "/v1/locks/spec.x/acquire", `{} {}`, 400, "invalid_json"},
		{"POST", "/v1/locks/spec.x/acquire", `[]`, 400, "invalid_json"},
		{"POST", "/v1/locks/spec.x/acquire", `{"pad": "` + strings.Repeat("x", 70000) + `"}`, 413, "body_too_large"},
		{"POST", "/v1/locks/-spec/acquire", `{}`, 400, "invalid_key"},
		{"POST", "/v1/locks/spec%20x/acquire", `{}`, 400, "invalid_key"},
		{"POST", "/v1/locks/spec%2Fx/acquire", `{}`, 400, "invalid_key"},
		{"POST", "/v1/locks/" + strings.Repeat("k", 201) + "/acquire", `{}`, 400, "invalid_key"},
		{"POST", "/v1/locks/spec.held/renew", `{}`, 400, "invalid_lease_id"},
		{"POST", "/v1/locks/spec.held/renew", `{"lease_id": "a/b"}`, 400, "invalid_lease_id"},
		{"POST", "/v1/locks/spec.held/renew", `{"lease_id": 12}`, 400, "invalid_lease_id"},
		{"POST", "/v1/locks/spec.held/renew", `{"lease_id": "` + leaseID + `", "ttl_ms": 50}`, 400, "invalid_ttl_ms"},
		{"POST", "/v1/locks/spec.held/renew", `{"lease_id": "AAAAAAAAAAAAAAAAAAAAAA"}`, 410, "lease_expired"},
		{"POST", "/v1/locks/spec.held/release", `{"lease_id": "AAAAAAAAAAAAAAAAAAAAAA"}`, 410, "lease_expired"},
		{"POST", "/v1/locks/spec.other/release", `{"lease_id": "` + leaseID + `"}`, 410, "lease_expired"},
		{"POST", "/v1/locks/spec.held/release", `{"lease_id": "` + leaseID + `", "extra": 1}`, 400, "unknown_field"},
		{"GET", "/v1/locks/spec!x", ``, 400, "invalid_key"},
		{"GET", "/v1/locks?limit=0", ``, 400, "invalid_limit"},
		{"GET", "/v1/locks?limit=x", ``, 400, "invalid_limit"},
		{"GET", "/v1/locks?prefix=%2F", ``, 400, "invalid_prefix"},
		{"GET", "/v1/locks?after=%2F", ``, 400, "invalid_after"},
		{"GET", "/v1/locks?sort=key", ``, 400, "unknown_parameter"},
		{"DELETE", "/v1/locks/spec.held", ``, 405, "method_not_allowed"},
		{"GET", "/v2/locks", ``, 404, "not_found"},
		{"POST", "/v1/locks/spec/x/acquire", `{}`, 404, "not_found"}, // a raw / in a key reaches no route
	}
	for _, b := range bad {
		t.Run(b.code, func(t *testing.T) {
			s.t = t
			s.want(s.do(b.method, b.path, b.body), b.status, b.code)
		})
	}
	s.t = t
	st := s.do("GET", "/v1/locks/spec.held", "")
	s.want(st, 200, "")
	if st.json["held"] != true || st.json["token"] != token || st.json["owner"] != "holder" {
		t.Fatalf("after the bad requests the lock is %s, want still held by the holder with token %v", st.body, token)
	}
	if _, ok := st.json["lease_id"]; ok {
		t.Errorf("inspection shows the lease id: %s", st.body)
	}

	// The happy paths.
	r := s.do("POST", "/v1/locks/spec.held/renew", `{"lease_id": "`+leaseID+`"}`)
	s.want(r, 200, "")
	if r.json["ttl_ms"] != float64(30000) || r.json["token"] != token {
		t.Errorf("renew without ttl_ms = %s, want the same token and ttl_ms 30000", r.body)
	}
	s.want(s.do("POST", "/v1/locks/spec.held/renew", `{"lease_id": "`+leaseID+`", "ttl_ms": 20000}`), 200, "")
	s.want(s.do("GET", "/v1/locks/spec.free", ""), 200, "")
	s.want(s.do("POST", "/v1/locks/spec.empty/acquire", ``), 200, "")
	s.want(s.do("POST", "/v1/locks/spec.integral/acquire", `{"ttl_ms": 1000.0, "owner": "`+strings.Repeat("é", 256)+`"}`), 200, "")
	for _, k := range []string{"spec.list.a", "spec.list.b", "spec.list.c"} {
		s.want(s.do("POST", "/v1/locks/"+k+"/acquire", `{"owner": "lister"}`), 200, "")
	}
	page := s.do("GET", "/v1/locks?prefix=spec.list.&limit=2", "")
	s.want(page, 200, "")
	if page.json["next"] != "spec.list.b" {
		t.Errorf("first page = %s, want next spec.list.b", page.body)
	}
	page = s.do("GET", "/v1/locks?prefix=spec.list.&limit=2&after=spec.list.b", "")
	s.want(page, 200, "")
	if locks, _ := page.json["locks"].([]any); len(locks) != 1 {
		t.Errorf("second page = %s, want one lock", page.body)
	}
	s.want(s.do("POST", "/v1/locks/spec.held/release", `{"lease_id": "`+leaseID+`"}`), 204, "")
	s.want(s.do("POST", "/v1/locks/spec.held/release", `{"lease_id": "`+leaseID+`"}`), 410, "lease_expired")
	s.want(s.do("GET", "/healthz", ""), 200, "")
	s.want(s.do("GET", "/readyz", ""), 200, "")
	m := s.do("GET", "/metrics", "")
	s.want(m, 200, "")
	for _, name := range []string{"lockd_http_request_duration_seconds", "lockd_acquire_duration_seconds", "lockd_held_locks", "lockd_waiters", "lockd_leases_expired_total"} {
		if !bytes.Contains(m.body, []byte(name)) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if bytes.Contains(m.body, []byte(leaseID)) {
		t.Errorf("/metrics shows a lease id")
	}

	// A long poll cut short by lockd stopping gets shutting_down, promptly.
	s.want(s.do("POST", "/v1/locks/spec.stop/acquire", `{}`), 200, "")
	done := make(chan reply, 1)
	go func() { done <- s.do("POST", "/v1/locks/spec.stop/acquire", `{"wait_ms": 60000}`) }()
	time.Sleep(300 * time.Millisecond)
	s.api.Stopping()
	select {
	case r := <-done:
		s.want(r, 503, "shutting_down")
	case <-time.After(10 * time.Second):
		t.Fatalf("a waiter was still waiting 10s after Stopping")
	}

	// The store gone: 503 backend_unavailable, for readiness and locking.
	s.etcd.StopMember(0)
	s.want(s.do("GET", "/readyz", ""), 503, "backend_unavailable")
	s.want(s.do("POST", "/v1/locks/spec.down/acquire", `{}`), 503, "backend_unavailable")
}
