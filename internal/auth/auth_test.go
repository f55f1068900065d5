package auth

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const sample = `{"tokens": [
  {"name": "billing", "token": "billing-secret-0123456789", "prefixes": ["billing:"], "rights": ["lock", "read"]},
  {"name": "viewer", "token_sha256": "%s", "prefixes": ["billing:", "ops:"], "rights": ["read"]},
  {"name": "root", "token": "root-secret-0123456789ab", "rights": ["admin"]},
  {"name": "worker", "cert_names": ["worker-1.internal"], "prefixes": ["jobs:"], "rights": ["lock"]}
]}`

func sampleTable(t *testing.T) *table {
	t.Helper()
	h := sha256.Sum256([]byte("viewer-secret-0123456789"))
	tab, err := parse([]byte(strings.Replace(sample, "%s", hex.EncodeToString(h[:]), 1)))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return tab
}

func TestRights(t *testing.T) {
	tab := sampleTable(t)
	byToken := func(s string) *Principal {
		p := tab.token(s)
		if p == nil {
			t.Fatalf("token %q not found", s)
		}
		return p
	}
	billing, viewer, root := byToken("billing-secret-0123456789"), byToken("viewer-secret-0123456789"), byToken("root-secret-0123456789ab")
	worker := tab.certs["worker-1.internal"]
	tests := []struct {
		who   *Principal
		right Right
		key   string
		want  bool
	}{
		{billing, RightLock, "billing:invoice-7", true},
		{billing, RightRead, "billing:invoice-7", true},
		{billing, RightLock, "ops:deploy", false},
		{billing, RightLock, "billing", false}, // the prefix includes the colon
		{billing, RightAdmin, "billing:x", false},
		{viewer, RightRead, "ops:deploy", true},
		{viewer, RightLock, "ops:deploy", false},
		{viewer, RightRead, "jobs:x", false},
		{root, RightLock, "anything", true},
		{root, RightAdmin, "", true},
		{worker, RightLock, "jobs:nightly", true},
		{worker, RightRead, "jobs:nightly", false},
	}
	for _, tc := range tests {
		if got := tc.who.Can(tc.right, tc.key); got != tc.want {
			t.Errorf("%s.Can(%s, %q) = %v, want %v", tc.who.Name, tc.right, tc.key, got, tc.want)
		}
	}
	if billing.CanList("") || !billing.CanList("billing:") || !billing.CanList("billing:2026") || billing.CanList("bill") {
		t.Errorf("billing list rights wrong")
	}
	if !root.CanList("") {
		t.Errorf("admin cannot list everything")
	}
}

func TestUnknownTokens(t *testing.T) {
	tab := sampleTable(t)
	for _, s := range []string{"", "billing-secret-012345678", "billing-secret-0123456789 ", "BILLING-SECRET-0123456789", "worker-1.internal"} {
		if p := tab.token(s); p != nil {
			t.Errorf("token %q authenticated as %q, want nobody", s, p.Name)
		}
	}
}

func TestParseRejects(t *testing.T) {
	tests := map[string]string{
		"not json":         `tokens`,
		"unknown field":    `{"tokens": [], "extra": 1}`,
		"no name":          `{"tokens": [{"token": "0123456789abcdef", "prefixes": ["a"], "rights": ["lock"]}]}`,
		"duplicate name":   `{"tokens": [{"name": "a", "token": "0123456789abcdef", "prefixes": ["a"], "rights": ["lock"]}, {"name": "a", "token": "0123456789abcdeX", "prefixes": ["a"], "rights": ["lock"]}]}`,
		"duplicate token":  `{"tokens": [{"name": "a", "token": "0123456789abcdef", "prefixes": ["a"], "rights": ["lock"]}, {"name": "b", "token": "0123456789abcdef", "prefixes": ["a"], "rights": ["lock"]}]}`,
		"bad right":        `{"tokens": [{"name": "a", "token": "0123456789abcdef", "prefixes": ["a"], "rights": ["write"]}]}`,
		"no rights":        `{"tokens": [{"name": "a", "token": "0123456789abcdef", "prefixes": ["a"], "rights": []}]}`,
		"no prefixes":      `{"tokens": [{"name": "a", "token": "0123456789abcdef", "rights": ["lock"]}]}`,
		"short token":      `{"tokens": [{"name": "a", "token": "short", "prefixes": ["a"], "rights": ["lock"]}]}`,
		"bad hash":         `{"tokens": [{"name": "a", "token_sha256": "abc", "prefixes": ["a"], "rights": ["lock"]}]}`,
		"both secrets":     `{"tokens": [{"name": "a", "token": "0123456789abcdef", "token_sha256": "` + strings.Repeat("0", 64) + `", "prefixes": ["a"], "rights": ["lock"]}]}`,
		"no credential":    `{"tokens": [{"name": "a", "prefixes": ["a"], "rights": ["lock"]}]}`,
		"negative limit":   `{"tokens": [{"name": "a", "token": "0123456789abcdef", "prefixes": ["a"], "rights": ["lock"], "max_leases": -1}]}`,
		"trailing garbage": `{"tokens": []} {}`,
	}
	for name, in := range tests {
		if _, err := parse([]byte(in)); err == nil {
			t.Errorf("%s: Parse accepted %s", name, in)
		} else if strings.Contains(err.Error(), "0123456789abcdef") {
			t.Errorf("%s: error %q echoes the secret", name, err)
		}
	}
}

func TestReloadKeepsOldTableOnError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens.json")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"tokens": [{"name": "a", "token": "first-token-0123456789", "prefixes": ["a:"], "rights": ["lock"]}]}`)
	s, err := Load(path)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	write(`{"tokens": [`)
	if err := s.Reload(); err == nil {
		t.Fatalf("Reload of a broken file succeeded")
	}
	if s.Token("first-token-0123456789") == nil {
		t.Fatalf("a failed reload dropped the table in force")
	}
	write(`{"tokens": [{"name": "b", "token": "second-token-0123456789", "prefixes": ["b:"], "rights": ["lock"]}]}`)
	if err := s.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if s.Token("first-token-0123456789") != nil || s.Token("second-token-0123456789") == nil {
		t.Fatalf("Reload did not replace the table")
	}
}

// The parser never panics, and whatever it accepts grants no right that the
// file did not name.
func FuzzParse(f *testing.F) {
	f.Add([]byte(sample))
	f.Add([]byte(`{"tokens": []}`))
	f.Add([]byte(`{"tokens": [{"name": "a", "token": "0123456789abcdef", "prefixes": [""], "rights": ["read"]}]}`))
	f.Add([]byte(`{"tokens": [{"name": "a", "cert_names": ["x"], "prefixes": ["a"], "rights": ["lock", "lock"]}]}`))
	f.Add([]byte(`{"tokens": null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		tab, err := parse(data)
		if err != nil {
			return
		}
		for _, e := range tab.entries {
			p := e.principal
			if !p.Rights[RightAdmin] && len(p.Prefixes) == 0 {
				t.Fatalf("accepted a non-admin entry %q without prefixes", p.Name)
			}
			if !p.Rights[RightAdmin] && !p.Rights[RightLock] && p.Can(RightLock, "any") {
				t.Fatalf("entry %q can lock without the lock right", p.Name)
			}
		}
	})
}
