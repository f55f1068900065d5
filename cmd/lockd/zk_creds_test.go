package main

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/go-zookeeper/zk"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/lockd/lockd/internal/testserver"
)

// zkEnv is lockd's environment for --backend zk with a password file
// holding password (no credentials when user is empty).
func zkEnv(t *testing.T, servers, root, user, password string) map[string]string {
	t.Helper()
	env := map[string]string{
		"LOCKD_LISTEN":             "127.0.0.1:0",
		"LOCKD_BACKEND":            "zk",
		"LOCKD_ZK_SERVERS":         servers,
		"LOCKD_ZK_ROOT":            root,
		"LOCKD_ZK_SESSION_TIMEOUT": "2s",
	}
	if user != "" {
		f := filepath.Join(t.TempDir(), "zk-password")
		if err := os.WriteFile(f, []byte(password+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		env["LOCKD_ZK_USER"], env["LOCKD_ZK_PASSWORD_FILE"] = user, f
	}
	return env
}

// runFails runs lockd with env and returns the error it stops with; it must
// stop on its own, before serving.
func runFails(t *testing.T, env map[string]string) error {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	out := &lineWriter{addr: make(chan string, 1)}
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, func(k string) string { return env[k] }, out, io.Discard) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("run = nil, printed %q; want it to refuse to start", out.String())
		}
		return err
	case <-out.addr:
		cancel()
		<-done
		t.Fatalf("lockd started: %q; want it to refuse to start", out.String())
	case <-time.After(40 * time.Second):
		t.Fatalf("run neither served nor failed in 40s")
	}
	return nil
}

func zkRaw(t *testing.T, addr, auth string) *zk.Conn {
	t.Helper()
	conn, _, err := zk.Connect([]string{addr}, 5*time.Second, zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Close)
	if auth != "" {
		if err := conn.AddAuth("digest", []byte(auth)); err != nil {
			t.Fatalf("AddAuth: %v", err)
		}
	}
	return conn
}

// lockd with --zk-user and --zk-password-file serves locks whose znodes
// nobody else can read or change, keeps its identity across a reconnect to
// ZooKeeper, and refuses to start with a wrong password or none.
func TestZKCredentials(t *testing.T) {
	z := testserver.ZooKeeper(t, 1)
	proxy := toxiproxy.NewProxy(toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop()), "zk", "127.0.0.1:0", z.Addr(0))
	if err := proxy.Start(); err != nil {
		t.Fatalf("proxy: %v", err)
	}
	t.Cleanup(proxy.Stop)
	const root, user, password = "/lockd-creds", "lockd", "correct horse battery staple"

	base, out, stop := startInProcess(t, zkEnv(t, proxy.Listen, root, user, password))
	if !strings.Contains(out.String(), "as digest user lockd") {
		t.Errorf("start-up line = %q, want it to name the digest user", out.String())
	}
	code, g := post(t, base+"/v1/locks/creds/acquire", `{"ttl_ms": 30000, "owner": "zk-creds"}`)
	if code != 200 {
		t.Fatalf("acquire: %d %v", code, g)
	}
	id := g["lease_id"].(string)
	if code, r := post(t, base+"/v1/locks/creds/renew", `{"lease_id": "`+id+`"}`); code != 200 || r["token"] != g["token"] {
		t.Fatalf("renew: %d %v", code, r)
	}

	// Least privilege, seen with raw clients: no auth, another user.
	owner := zkRaw(t, z.Addr(0), user+":"+password)
	queue, _, err := owner.Children(root + "/creds")
	if err != nil || len(queue) != 1 {
		t.Fatalf("queue as lockd's user = %v, %v; want the holder's node", queue, err)
	}
	holder := root + "/creds/" + queue[0]
	for _, auth := range []string{"", "mallory:mallory"} {
		c := zkRaw(t, z.Addr(0), auth)
		if _, _, err := c.Get(holder); !errors.Is(err, zk.ErrNoAuth) {
			t.Errorf("auth %q: read the holder: %v, want %v", auth, err, zk.ErrNoAuth)
		}
		if _, _, err := c.Children(root + "/creds"); !errors.Is(err, zk.ErrNoAuth) {
			t.Errorf("auth %q: list the queue: %v, want %v", auth, err, zk.ErrNoAuth)
		}
		if _, err := c.Set(holder, []byte("{}"), -1); !errors.Is(err, zk.ErrNoAuth) {
			t.Errorf("auth %q: setData on the holder: %v, want %v", auth, err, zk.ErrNoAuth)
		}
		if err := c.Delete(holder, -1); !errors.Is(err, zk.ErrNoAuth) {
			t.Errorf("auth %q: delete the holder: %v, want %v", auth, err, zk.ErrNoAuth)
		}
	}

	// Cut lockd's connection to ZooKeeper (a real TCP proxy stopped and
	// started). The client reconnects and re-sends its identity, or the
	// renew below would be refused (NoAuth, 5xx) for good.
	proxy.Stop()
	time.Sleep(300 * time.Millisecond)
	if err := proxy.Start(); err != nil {
		t.Fatalf("proxy restart: %v", err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, r := post(t, base+"/v1/locks/creds/renew", `{"lease_id": "`+id+`"}`)
		if code == 200 && r["token"] == g["token"] {
			break
		}
		if code != 503 || time.Now().After(deadline) {
			t.Fatalf("renew after the reconnect: %d %v", code, r)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code, r := post(t, base+"/v1/locks/creds/release", `{"lease_id": "`+id+`"}`); code != 204 {
		t.Fatalf("release after the reconnect: %d %v", code, r)
	}
	if code, r := post(t, base+"/v1/locks/creds/acquire", `{"ttl_ms": 5000}`); code != 200 {
		t.Fatalf("acquire after the reconnect: %d %v", code, r)
	}
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}

	// The root is now lockd's user's: a wrong password, another user, or
	// none at all is refused at start, naming the root and the cause.
	for _, tc := range []struct {
		name, user, password string
		want                 []string
	}{
		{"wrong password", user, "tr0ub4dor&3", []string{`--zk-user "lockd"`, "no permission on " + root, "NoAuth", "wrong password"}},
		{"another user", "mallory", "mallory-pw", []string{`--zk-user "mallory"`, "no permission on " + root}},
		{"no credentials", "", "", []string{"no --zk-user given", "no permission on " + root}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := runFails(t, zkEnv(t, z.Addr(0), root, tc.user, tc.password))
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("run = %q, want it to say %q", err, want)
				}
			}
			if tc.password != "" && strings.Contains(err.Error(), tc.password) {
				t.Errorf("run = %q shows the password", err)
			}
		})
	}
}

// Credentials that cannot work are refused before lockd dials ZooKeeper.
func TestZKCredentialFlags(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("pw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, user, file, want string
	}{
		{"user without password file", "lockd", "", "needs --zk-password-file"},
		{"password file without user", "", pw, "--zk-password-file needs --zk-user"},
		{"empty password", "lockd", empty, "is empty"},
		{"missing password file", "lockd", filepath.Join(dir, "nope"), "--zk-password-file: open"},
		{"colon in user", "a:b", pw, "contains ':'"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// No server listens on port 1: a dial would fail differently.
			env := zkEnv(t, "127.0.0.1:1", "/lockd", "", "")
			env["LOCKD_ZK_USER"], env["LOCKD_ZK_PASSWORD_FILE"] = tc.user, tc.file
			if err := runFails(t, env); !strings.Contains(err.Error(), tc.want) {
				t.Errorf("run = %q, want it to say %q", err, tc.want)
			}
		})
	}
}

// zkTLSEnv is lockd's environment for a TLS ZooKeeper that wants client
// certificates, with digest user lockd.
func zkTLSEnv(t *testing.T, z *testserver.ZK, ca *testserver.CA, root string) map[string]string {
	t.Helper()
	client := ca.MustIssue(t, "lockd-zk-client", "lockd")
	env := zkEnv(t, strings.Join(z.Addrs(), ","), root, "lockd", "tls and digest")
	env["LOCKD_ZK_TLS"] = "true"
	env["LOCKD_ZK_TLS_CA"] = ca.CertFile
	env["LOCKD_ZK_TLS_CERT"] = client.CertFile
	env["LOCKD_ZK_TLS_KEY"] = client.KeyFile
	return env
}

// lockd talks TLS, with a client certificate and digest auth, to a
// ZooKeeper whose only client port is its secureClientPort; with any TLS
// setting wrong it refuses to start, at once, and says which.
func TestZKTLS(t *testing.T) {
	ca := testserver.TestCA(t)
	z := testserver.ZooKeeperWith(t, 1, testserver.ZKOptions{TLS: &testserver.ZKTLS{CA: ca, AuthClients: true}})
	const root = "/lockd-tls"
	env := zkTLSEnv(t, z, ca, root)

	base, out, stop := startInProcess(t, env)
	if want := "zk at " + z.Addr(0) + " over TLS under " + root + " as digest user lockd"; !strings.Contains(out.String(), want) {
		t.Errorf("start-up line = %q, want it to say %q", out.String(), want)
	}
	redisAcquireRenewRelease(t, base, "zk-tls")
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}

	other := testserver.TestCA(t)
	foreign := other.MustIssue(t, "foreign-zk-client", "lockd")
	plain := testserver.ZooKeeper(t, 1)
	for _, tc := range []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"untrusted CA", redisEnvWith(env, "LOCKD_ZK_TLS_CA", other.CertFile), []string{"not signed by a CA lockd trusts (--zk-tls-ca)", z.Addr(0), "unknown authority"}},
		{"no client certificate", redisEnvWith(env, "LOCKD_ZK_TLS_CERT", "", "LOCKD_ZK_TLS_KEY", ""), []string{"wants a client certificate", "--zk-tls-cert", z.Addr(0)}},
		{"client certificate from another CA", redisEnvWith(env, "LOCKD_ZK_TLS_CERT", foreign.CertFile, "LOCKD_ZK_TLS_KEY", foreign.KeyFile), []string{"refused lockd's client certificate", z.Addr(0)}},
		{"plain TCP to the TLS port", redisEnvWith(env, "LOCKD_ZK_TLS", "", "LOCKD_ZK_TLS_CA", "", "LOCKD_ZK_TLS_CERT", "", "LOCKD_ZK_TLS_KEY", ""), []string{"speaks only TLS", "give --zk-tls", z.Addr(0)}},
		{"TLS to a plain port", redisEnvWith(env, "LOCKD_ZK_SERVERS", plain.Addr(0)), []string{"does not speak TLS", "secureClientPort", plain.Addr(0)}},
		{"CA without --zk-tls", redisEnvWith(env, "LOCKD_ZK_TLS", ""), []string{"need --zk-tls"}},
		{"certificate without key", redisEnvWith(env, "LOCKD_ZK_TLS_KEY", ""), []string{"--zk-tls-cert and --zk-tls-key go together"}},
		{"CA file without a certificate", redisEnvWith(env, "LOCKD_ZK_TLS_CA", env["LOCKD_ZK_PASSWORD_FILE"]), []string{"--zk-tls-ca: no certificate in"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			err := runFails(t, tc.env)
			t.Logf("lockd refused to start after %v: %v", time.Since(start).Round(time.Millisecond), err)
			for _, want := range tc.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("run = %q, want it to say %q", err, want)
				}
			}
			// Every cause is known at the first attempt: no waiting out
			// the 30 s dial timeout.
			if d := time.Since(start); d > 15*time.Second {
				t.Errorf("lockd took %v to refuse; want it to stop at the first answer", d)
			}
			if strings.Contains(err.Error(), "tls and digest") {
				t.Errorf("run = %q shows the password", err)
			}
		})
	}
}
