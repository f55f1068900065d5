package httpapi_test

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lockd/lockd/internal/auth"
	"github.com/lockd/lockd/internal/httpapi"
)

const (
	tokA      = "tenant-a-secret-0123456789"
	tokReader = "reader-a-secret-0123456789"
	tokAdmin  = "admin-secret-0123456789ab"
)

func authStore(t *testing.T) *auth.Store {
	t.Helper()
	return tokensFile(t, `{"tokens": [
	  {"name": "tenant-a", "token": "`+tokA+`", "prefixes": ["a:"], "rights": ["lock", "read"]},
	  {"name": "reader-a", "token": "`+tokReader+`", "prefixes": ["a:"], "rights": ["read"]},
	  {"name": "admin", "token": "`+tokAdmin+`", "rights": ["admin"]}
	]}`)
}

// tokensFile loads a tokens file with the given contents.
func tokensFile(t testing.TB, contents string) *auth.Store {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tokens.json")
	if err := os.WriteFile(path, []byte(contents), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := auth.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// Every right × endpoint: a token for a: cannot touch b:, a reader cannot
// lock, nobody without a token gets in, and a guessed or stolen lease id of
// another tenant's key releases nothing.
func TestRightsPerEndpoint(t *testing.T) {
	var audit bytes.Buffer
	s := newSpecServer(t, httpapi.Options{Auth: authStore(t), Audit: slog.New(slog.NewJSONHandler(&audit, nil))})

	b := s.doAs(tokAdmin, "POST", "/v1/locks/b:x/acquire", `{"owner": "tenant-b"}`)
	s.want(b, 200, "")
	bLease := b.json["lease_id"].(string)
	a := s.doAs(tokA, "POST", "/v1/locks/a:x/acquire", `{}`)
	s.want(a, 200, "")
	aLease := a.json["lease_id"].(string)

	cases := []struct {
		token, method, path, body string
		status                    int
		code                      string
	}{
		{"", "POST", "/v1/locks/a:y/acquire", `{}`, 401, "unauthorized"},
		{"not-a-token", "POST", "/v1/locks/a:y/acquire", `{}`, 401, "unauthorized"},
		{"", "GET", "/v1/locks/a:x", ``, 401, "unauthorized"},
		{"", "GET", "/metrics", ``, 401, "unauthorized"},
		{"", "GET", "/healthz", ``, 200, ""},
		{"", "GET", "/readyz", ``, 200, ""},
		{tokA, "POST", "/v1/locks/b:y/acquire", `{}`, 403, "forbidden"},
		{tokA, "GET", "/v1/locks/b:x", ``, 403, "forbidden"},
		{tokA, "POST", "/v1/locks/b:x/release", `{"lease_id": "` + bLease + `"}`, 403, "forbidden"},
		{tokA, "POST", "/v1/locks/b:x/renew", `{"lease_id": "` + bLease + `"}`, 403, "forbidden"},
		{tokA, "POST", "/v1/locks/a:x/release", `{"lease_id": "` + bLease + `"}`, 410, "lease_expired"},
		{tokA, "GET", "/v1/locks?prefix=", ``, 403, "forbidden"},
		{tokA, "GET", "/v1/locks?prefix=b:", ``, 403, "forbidden"},
		{tokA, "GET", "/v1/locks?prefix=a:", ``, 200, ""},
		{tokA, "GET", "/metrics", ``, 403, "forbidden"},
		{tokA, "GET", "/v1/locks/a:x", ``, 200, ""},
		{tokReader, "POST", "/v1/locks/a:z/acquire", `{}`, 403, "forbidden"},
		{tokReader, "POST", "/v1/locks/a:x/release", `{"lease_id": "` + aLease + `"}`, 403, "forbidden"},
		{tokReader, "GET", "/v1/locks/a:x", ``, 200, ""},
		{tokReader, "GET", "/v1/locks?prefix=a:", ``, 200, ""},
		{tokAdmin, "GET", "/v1/locks?prefix=", ``, 200, ""},
		{tokAdmin, "GET", "/metrics", ``, 200, ""},
	}
	for _, c := range cases {
		r := s.doAs(c.token, c.method, c.path, c.body)
		if r.status != c.status || (c.code != "" && r.json["code"] != c.code) {
			t.Errorf("%s %s as %q: %d %s, want %d %s", c.method, c.path, c.token, r.status, r.body, c.status, c.code)
		}
	}
	// Both holders still hold their locks.
	for _, k := range []string{"b:x", "a:x"} {
		if st := s.doAs(tokAdmin, "GET", "/v1/locks/"+k, ""); st.json["held"] != true {
			t.Errorf("%s after the refused calls: %s, want still held", k, st.body)
		}
	}
	log := audit.String()
	for _, want := range []string{`"event":"grant"`, `"event":"refused"`, `"principal":"tenant-a"`, `"code":"forbidden"`} {
		if !strings.Contains(log, want) {
			t.Errorf("audit log lacks %s", want)
		}
	}
	for _, secret := range []string{aLease, bLease, tokA, tokAdmin} {
		if strings.Contains(log, secret) {
			t.Errorf("audit log contains a secret (%q)", secret)
		}
	}
}
