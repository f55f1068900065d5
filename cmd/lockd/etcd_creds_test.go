package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockd/lockd/internal/testserver"
)

// securedEtcd is an etcd that requires client certificates and has
// authentication on, with user lockd allowed readwrite on /lockd/ only and
// user intruder allowed nothing.
type securedEtcd struct {
	*testserver.Etcd
	ca       *testserver.CA
	lockd    *testserver.Issued // client certificate, CN lockd
	intruder *testserver.Issued // client certificate, CN intruder
	pwFile   string             // lockd's password
}

func startSecuredEtcd(t *testing.T) *securedEtcd {
	t.Helper()
	ca := testserver.TestCA(t)
	e := testserver.EtcdClusterWith(t, 1, testserver.EtcdOptions{CA: ca, RootPassword: "root-secret"})
	if err := e.AddUser("lockd", "lockd-secret", "/lockd/"); err != nil {
		t.Fatal(err)
	}
	if err := e.AddUser("intruder", "intruder-secret", ""); err != nil {
		t.Fatal(err)
	}
	s := &securedEtcd{Etcd: e, ca: ca,
		lockd:    ca.MustIssue(t, "lockd-etcd-client", "lockd"),
		intruder: ca.MustIssue(t, "intruder-etcd-client", "intruder"),
		pwFile:   writeFile(t, "lockd-password", "lockd-secret\n"),
	}
	return s
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// env is lockd's environment with every credential right; tests change or
// delete entries to break one.
func (s *securedEtcd) env() map[string]string {
	return map[string]string{
		"LOCKD_LISTEN":             "127.0.0.1:0",
		"LOCKD_ETCD_ENDPOINTS":     strings.Join(s.URLs(), ","),
		"LOCKD_ETCD_CA":            s.ca.CertFile,
		"LOCKD_ETCD_CERT":          s.lockd.CertFile,
		"LOCKD_ETCD_KEY":           s.lockd.KeyFile,
		"LOCKD_ETCD_USER":          "lockd",
		"LOCKD_ETCD_PASSWORD_FILE": s.pwFile,
	}
}

// runToError runs lockd, which must fail to start, and returns its error.
func runToError(t *testing.T, env map[string]string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	out := &lineWriter{addr: make(chan string, 1)}
	err := run(ctx, nil, func(k string) string { return env[k] }, out, out)
	if err == nil || ctx.Err() != nil {
		t.Fatalf("lockd started (err %v); printed %q", err, out.String())
	}
	return err
}

func TestEtcdCredentials(t *testing.T) {
	s := startSecuredEtcd(t)

	t.Run("LocksOverTLSAndRBAC", func(t *testing.T) {
		base, out, stop := startInProcess(t, s.env())
		if !strings.Contains(out.String(), "as user lockd") {
			t.Errorf("start-up line %q does not say which etcd user lockd is", out.String())
		}
		code, g := post(t, base+"/v1/locks/creds/acquire", `{"ttl_ms": 5000, "owner": "a"}`)
		if code != 200 {
			t.Fatalf("acquire: %d %v", code, g)
		}
		id := g["lease_id"].(string)
		if code, r := post(t, base+"/v1/locks/creds/renew", `{"lease_id": "`+id+`", "ttl_ms": 8000}`); code != 200 || r["token"] != g["token"] {
			t.Fatalf("renew: %d %v, want 200 and token %v", code, r, g["token"])
		}
		if code, r := post(t, base+"/v1/locks/creds/release", `{"lease_id": "`+id+`"}`); code != 204 {
			t.Fatalf("release: %d %v", code, r)
		}
		code, g2 := post(t, base+"/v1/locks/creds/acquire", `{"ttl_ms": 5000, "owner": "b"}`)
		if code != 200 {
			t.Fatalf("second acquire: %d %v", code, g2)
		}
		if got, prev := g2["token"].(float64), g["token"].(float64); got <= prev {
			t.Errorf("second grant's token = %v, want above the first's %v", got, prev)
		}
		// A raw client as user lockd sees the grant under /lockd/ and
		// nothing outside it.
		cli := s.client(t, "lockd", "lockd-secret", s.lockd)
		resp, err := cli.Get(ctxT(t), "/lockd/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil || resp.Count == 0 {
			t.Errorf("user lockd reading /lockd/ while a lock is held: count %v, err %v; want the grant", resp, err)
		}
		if _, err := cli.Get(ctxT(t), "/other/", clientv3.WithPrefix()); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("user lockd reading /other/: %v, want permission denied", err)
		}

		// (c) Another user, even with a valid client certificate and its
		// password, can neither read nor change lockd's keys.
		for _, intruder := range []struct{ name, user, pw string }{
			{"password login", "intruder", "intruder-secret"},
			{"certificate CN only", "", ""},
		} {
			cli := s.client(t, intruder.user, intruder.pw, s.intruder)
			if _, err := cli.Get(ctxT(t), "/lockd/", clientv3.WithPrefix()); !errors.Is(err, rpctypes.ErrPermissionDenied) {
				t.Errorf("intruder (%s) reading /lockd/: %v, want permission denied", intruder.name, err)
			}
			if _, err := cli.Delete(ctxT(t), "/lockd/", clientv3.WithPrefix()); !errors.Is(err, rpctypes.ErrPermissionDenied) {
				t.Errorf("intruder (%s) deleting /lockd/: %v, want permission denied", intruder.name, err)
			}
			if _, err := cli.Put(ctxT(t), "/lockd/q/creds/forged", `{"t":1}`); !errors.Is(err, rpctypes.ErrPermissionDenied) {
				t.Errorf("intruder (%s) writing under /lockd/: %v, want permission denied", intruder.name, err)
			}
		}
		if code, st := get(t, base+"/v1/locks/creds"); code != 200 || st["held"] != true || st["token"] != g2["token"] {
			t.Errorf("after the intruder: %d %v, want the second grant still held", code, st)
		}
		if err := stop(); err != nil {
			t.Fatalf("run: %v", err)
		}
	})

	// etcd maps a client certificate's CN to the user when no password
	// login is given: a certificate alone is a credential.
	t.Run("CertificateAlone", func(t *testing.T) {
		env := s.env()
		delete(env, "LOCKD_ETCD_USER")
		delete(env, "LOCKD_ETCD_PASSWORD_FILE")
		base, _, stop := startInProcess(t, env)
		if code, g := post(t, base+"/v1/locks/cert-only/acquire", `{"ttl_ms": 5000}`); code != 200 {
			t.Fatalf("acquire: %d %v", code, g)
		}
		if err := stop(); err != nil {
			t.Fatalf("run: %v", err)
		}
	})

	other := testserver.TestCA(t)
	cases := []struct {
		name  string
		edit  func(env map[string]string)
		wants []string
	}{
		{"NoClientCertificate", func(env map[string]string) {
			delete(env, "LOCKD_ETCD_CERT")
			delete(env, "LOCKD_ETCD_KEY")
		}, []string{"TLS handshake failed", "certificate required", "--etcd-cert"}},
		{"WrongPassword", func(env map[string]string) {
			env["LOCKD_ETCD_PASSWORD_FILE"] = writeFile(t, "wrong", "guess\n")
		}, []string{`authentication failed for user "lockd"`}},
		{"UntrustedServer", func(env map[string]string) {
			env["LOCKD_ETCD_CA"] = other.CertFile
		}, []string{"TLS handshake failed", "x509", "--etcd-ca"}},
		{"PrefixOutsideRole", func(env map[string]string) {
			env["LOCKD_ETCD_PREFIX"] = "/other/"
		}, []string{`permission denied on /other/ for user "lockd"`}},
		{"CertificateOfUserWithoutRole", func(env map[string]string) {
			delete(env, "LOCKD_ETCD_USER")
			delete(env, "LOCKD_ETCD_PASSWORD_FILE")
			env["LOCKD_ETCD_CERT"], env["LOCKD_ETCD_KEY"] = s.intruder.CertFile, s.intruder.KeyFile
		}, []string{`permission denied on /lockd/ for the client certificate's user "intruder"`}},
		{"PlainHTTPToTLSServer", func(env map[string]string) {
			delete(env, "LOCKD_ETCD_CA")
			delete(env, "LOCKD_ETCD_CERT")
			delete(env, "LOCKD_ETCD_KEY")
			env["LOCKD_ETCD_ENDPOINTS"] = strings.Join(s.Endpoints(), ",")
		}, []string{"no answer from", "https://"}},
	}
	for _, tc := range cases {
		t.Run("Refused"+tc.name, func(t *testing.T) {
			env := s.env()
			tc.edit(env)
			err := runToError(t, env)
			t.Logf("lockd refused to start: %v", err)
			for _, want := range tc.wants {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error = %q, want it to contain %q", err, want)
				}
			}
			if strings.Contains(err.Error(), "lockd-secret") {
				t.Errorf("error %q shows the password", err)
			}
		})
	}
}

func (s *securedEtcd) client(t *testing.T, user, pw string, cert *testserver.Issued) *clientv3.Client {
	t.Helper()
	cli, err := s.Client(user, pw, cert)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// A user given to a cluster whose authentication is off works (etcd ignores
// it), but lockd says at start that the locks are not protected.
func TestEtcdUserWithAuthOff(t *testing.T) {
	e := testserver.EtcdCluster(t, 1)
	_, out, stop := startInProcess(t, map[string]string{
		"LOCKD_LISTEN":             "127.0.0.1:0",
		"LOCKD_ETCD_ENDPOINTS":     strings.Join(e.Endpoints(), ","),
		"LOCKD_ETCD_USER":          "lockd",
		"LOCKD_ETCD_PASSWORD_FILE": writeFile(t, "pw", "secret\n"),
	})
	if !strings.Contains(out.String(), "WARNING: etcd authentication is off") {
		t.Errorf("start-up lines %q do not warn that etcd authentication is off", out.String())
	}
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
}
