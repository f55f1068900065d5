package etcd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Flag combinations that cannot work are refused before anything is dialled.
func TestCredentialConfig(t *testing.T) {
	pw := writeFile(t, "pw", "secret\n")
	empty := writeFile(t, "empty", "\n")
	cases := []struct {
		name string
		c    Config
		want string
	}{
		{"credentials for the embedded etcd", Config{User: "u", PasswordFile: pw}, "apply to an external etcd"},
		{"cert without key", Config{Endpoints: []string{"https://e:2379"}, Cert: "c.pem"}, "--etcd-cert and --etcd-key go together"},
		{"key without cert", Config{Endpoints: []string{"https://e:2379"}, Key: "k.pem"}, "--etcd-cert and --etcd-key go together"},
		{"ca with http endpoint", Config{Endpoints: []string{"e:2379"}, CA: "ca.pem"}, "need https:// --etcd-endpoints"},
		{"cert with http endpoint", Config{Endpoints: []string{"http://e:2379"}, Cert: "c.pem", Key: "k.pem"}, "need https:// --etcd-endpoints"},
		{"mixed schemes", Config{Endpoints: []string{"https://a:2379", "http://b:2379"}}, "mixes https:// and plain"},
		{"user without password file", Config{Endpoints: []string{"e:2379"}, User: "u"}, "--etcd-user and --etcd-password-file go together"},
		{"password file without user", Config{Endpoints: []string{"e:2379"}, PasswordFile: pw}, "--etcd-user and --etcd-password-file go together"},
		{"missing password file", Config{Endpoints: []string{"e:2379"}, User: "u", PasswordFile: pw + ".nope"}, "--etcd-password-file"},
		{"empty password", Config{Endpoints: []string{"e:2379"}, User: "u", PasswordFile: empty}, "is empty"},
		{"missing ca", Config{Endpoints: []string{"https://e:2379"}, CA: pw + ".nope"}, "--etcd-ca"},
		{"ca without certificate", Config{Endpoints: []string{"https://e:2379"}, CA: pw}, "no certificate in"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.c.credentials(tc.c.Endpoints)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v, want one containing %q", err, tc.want)
			}
		})
	}
	cr, err := Config{User: "u", PasswordFile: pw}.credentials([]string{"e:2379"})
	if err != nil || cr.password != "secret" || cr.tls != nil {
		t.Errorf("plain endpoint with a User: %+v, %v; want password %q without the newline and no TLS", cr, err, "secret")
	}
}

func TestCompactionConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		c    Config
		want string // "" : accepted
	}{
		{"embedded", Config{CompactEvery: time.Second}, "applies to an external etcd"},
		{"negative", Config{Endpoints: []string{"e:2379"}, CompactEvery: -time.Second}, "must be 0"},
		{"external", Config{Endpoints: []string{"e:2379"}, CompactEvery: time.Second}, ""},
		{"off", Config{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.checkCompaction(tc.c.Endpoints)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("error = %v, want %q", err, tc.want)
			}
		})
	}
}
