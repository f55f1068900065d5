package httpapi_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/httpapi"
)

func idemHeader(vs ...string) http.Header {
	return http.Header{"Idempotency-Key": vs}
}

// A malformed Idempotency-Key is a 400 naming it, and grants nothing.
func TestIdempotencyKeyHeaderChecked(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{})
	bad := []struct {
		name string
		h    http.Header
	}{
		{"empty", idemHeader("")},
		{"empty quoted", idemHeader(`""`)},
		{"unclosed quote", idemHeader(`"abc`)},
		{"bad escape", idemHeader(`"a\b"`)},
		{"inner quote", idemHeader(`"a"b"`)},
		{"space inside", idemHeader("a b")},
		{"not ASCII", idemHeader("clé")},
		{"tab", idemHeader("a\tb")},
		{"too long", idemHeader(strings.Repeat("k", 256))},
		{"twice", idemHeader("a", "b")},
	}
	for _, b := range bad {
		t.Run(b.name, func(t *testing.T) {
			s.t = t
			s.want(s.doWith("", b.h, "POST", "/v1/locks/idem.bad/acquire", `{}`), 400, "invalid_idempotency_key")
		})
	}
	s.t = t
	if st := s.do("GET", "/v1/locks/idem.bad", ""); st.json["held"] != false {
		t.Fatalf("after the refused acquires the key is %s, want free", st.body)
	}
	for _, ok := range []string{"k", strings.Repeat("k", 255), `"8e03978e-40d5-43e8"`, `"a\"b\\c"`, "~!#$%&'*+-.^_`|"} {
		r := s.doWith("", idemHeader(ok), "POST", "/v1/locks/idem.ok."+randomish(ok)+"/acquire", `{}`)
		s.want(r, 200, "")
	}
}

func randomish(s string) string {
	const hex = "0123456789abcdef"
	var h uint32 = 2166136261
	for i := 0; i < len(s); i++ {
		h = (h ^ uint32(s[i])) * 16777619
	}
	out := make([]byte, 8)
	for i := range out {
		out[i] = hex[h>>(4*i)&15]
	}
	return string(out)
}

// The whole promise over HTTP: the same grant on a retry, marked replayed;
// 422 for another body under the key; 410 once the grant ended. A quoted
// key and its bare form are one key.
func TestIdempotentAcquireOverHTTP(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{})
	const path = "/v1/locks/idem.http/acquire"
	first := s.doWith("", idemHeader(`"job-42"`), "POST", path, `{"ttl_ms": 30000, "owner": "w1"}`)
	s.want(first, 200, "")
	if first.header.Get("Idempotent-Replayed") != "" {
		t.Errorf("first acquire marked replayed")
	}
	again := s.doWith("", idemHeader("job-42"), "POST", path, `{"ttl_ms": 30000, "owner": "w1", "wait_ms": 500}`)
	s.want(again, 200, "")
	for _, f := range []string{"lease_id", "token", "expires_at"} {
		if again.json[f] != first.json[f] {
			t.Errorf("retry %s = %v, want the first grant's %v", f, again.json[f], first.json[f])
		}
	}
	if again.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("retry's Idempotent-Replayed = %q, want true", again.header.Get("Idempotent-Replayed"))
	}
	s.want(s.doWith("", idemHeader("job-42"), "POST", path, `{"ttl_ms": 10000, "owner": "w1"}`), 422, "idempotency_key_reused")
	s.want(s.doWith("", idemHeader("job-42"), "POST", path, `{"ttl_ms": 30000, "owner": "w2"}`), 422, "idempotency_key_reused")
	// Without the key it is another acquire: held.
	s.want(s.do("POST", path, `{"ttl_ms": 30000, "owner": "w1"}`), 409, "lock_held")
	s.want(s.do("POST", "/v1/locks/idem.http/release", `{"lease_id": "`+first.json["lease_id"].(string)+`"}`), 204, "")
	s.want(s.doWith("", idemHeader("job-42"), "POST", path, `{"ttl_ms": 30000, "owner": "w1"}`), 410, "lease_expired")
	if st := s.do("GET", "/v1/locks/idem.http", ""); st.json["held"] != false {
		t.Fatalf("after the 410 the key is %s, want free", st.body)
	}
}

// The record is scoped to the caller: another tenant sending the same key
// for the same lock gets its own acquire (here: held), never the first
// tenant's grant.
func TestIdempotencyKeyScopedByPrincipal(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{Auth: tokensFile(t, `{"tokens": [
	  {"name": "one", "token": "one-secret-0123456789abcdef", "prefixes": ["s:"], "rights": ["lock", "read"]},
	  {"name": "two", "token": "two-secret-0123456789abcdef", "prefixes": ["s:"], "rights": ["lock", "read"]}
	]}`)})
	const path = "/v1/locks/s:shared/acquire"
	a := s.doWith("one-secret-0123456789abcdef", idemHeader("same"), "POST", path, `{"ttl_ms": 30000}`)
	s.want(a, 200, "")
	b := s.doWith("two-secret-0123456789abcdef", idemHeader("same"), "POST", path, `{"ttl_ms": 30000}`)
	s.want(b, 409, "lock_held")
	if b.json["lease_id"] != nil {
		t.Fatalf("the other tenant got a lease id: %s", b.body)
	}
}

// A backend that cannot keep the record refuses a keyed acquire with 501
// and does nothing, rather than grant without the promise.
func TestIdempotencyUnsupported501(t *testing.T) {
	real := etcdBackend(t)
	plain := struct{ backend.Backend }{real} // hides backend.Idempotent
	ts := httptest.NewServer(httpapi.New(plain, httpapi.Options{}))
	t.Cleanup(ts.Close)
	req, _ := http.NewRequest("POST", ts.URL+"/v1/locks/idem.unsupported/acquire", strings.NewReader(`{}`))
	req.Header.Set("Idempotency-Key", "k1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 501 || !strings.Contains(string(body), `"idempotency_unsupported"`) {
		t.Fatalf("keyed acquire on a backend without idempotency: %d %s, want 501 idempotency_unsupported", resp.StatusCode, body)
	}
	if st, err := real.Inspect(t.Context(), "idem.unsupported"); err != nil || st.Held {
		t.Fatalf("after the 501 the key is %+v (%v), want free", st, err)
	}
}
