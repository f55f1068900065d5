package main

import (
	"crypto/tls"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lockd/lockd/internal/testserver"
)

// lockd over HTTPS with client certificates: a certificate the tokens file
// names gets its rights, one it does not name is refused, and a client
// without a certificate never gets past the handshake.
func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := testserver.TestCA(t)
	srv := ca.MustIssue(t, "server", "lockd", testserver.Loopback)
	worker := ca.MustIssue(t, "worker", "worker-1")
	stranger := ca.MustIssue(t, "stranger", "stranger")
	tokens := filepath.Join(dir, "tokens.json")
	if err := os.WriteFile(tokens, []byte(`{"tokens": [{"name": "workers", "cert_names": ["worker-1"], "prefixes": ["jobs:"], "rights": ["lock", "read"]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"LOCKD_LISTEN": "127.0.0.1:0", "LOCKD_DATA_DIR": filepath.Join(dir, "data"),
		"LOCKD_EMBED_ETCD_CLIENT_URL": freeURL(t), "LOCKD_EMBED_ETCD_PEER_URL": freeURL(t),
		"LOCKD_TLS_CERT": srv.CertFile, "LOCKD_TLS_KEY": srv.KeyFile, "LOCKD_TLS_CLIENT_CA": ca.CertFile, "LOCKD_AUTH_FILE": tokens,
	}
	base, _, stop := startInProcess(t, env)
	if !strings.HasPrefix(base, "https://") {
		t.Fatalf("lockd serves %s, want https", base)
	}
	roots := ca.Pool()
	clientWith := func(certs ...tls.Certificate) *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: certs}}}
	}
	status := func(c *http.Client, path string) int {
		t.Helper()
		resp, err := c.Post(base+path, "application/json", strings.NewReader(`{}`))
		if err != nil {
			return -1
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := status(clientWith(worker.TLS), "/v1/locks/jobs:nightly/acquire"); got != 200 {
		t.Errorf("worker-1 acquiring jobs:nightly: %d, want 200", got)
	}
	if got := status(clientWith(worker.TLS), "/v1/locks/billing:x/acquire"); got != 403 {
		t.Errorf("worker-1 acquiring billing:x: %d, want 403", got)
	}
	if got := status(clientWith(stranger.TLS), "/v1/locks/jobs:other/acquire"); got != 401 {
		t.Errorf("a certificate the tokens file does not name: %d, want 401", got)
	}
	if got := status(clientWith(), "/v1/locks/jobs:other/acquire"); got != -1 {
		t.Errorf("a client without a certificate got an HTTP answer (%d), want a failed handshake", got)
	}
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
}
