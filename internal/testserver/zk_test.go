package testserver

import (
	"crypto/tls"
	"os"
	"strings"
	"testing"
	"time"
)

// The ensemble elects a leader, survives the loss of its leader, and a
// restarted member serves again.
func TestZooKeeperEnsembleKillRestart(t *testing.T) {
	start := time.Now()
	z := ZooKeeper(t, 3)
	t.Logf("3-member ensemble serving after %v", time.Since(start))
	leader := z.Leader()
	if leader < 0 {
		t.Fatalf("no leader among %v", z.Addrs())
	}
	if err := z.Kill(leader); err != nil {
		t.Fatalf("Kill(%d): %v", leader, err)
	}
	if _, err := z.Mode(leader); err == nil {
		t.Fatalf("killed member %d still answers", leader)
	}
	deadline := time.Now().Add(30 * time.Second)
	for z.Leader() < 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no new leader 30s after killing member %d", leader)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := z.Restart(leader); err != nil {
		t.Fatalf("Restart(%d): %v", leader, err)
	}
	if mode, err := z.Mode(leader); err != nil || mode != "follower" {
		t.Errorf("restarted member mode = %q, %v; want follower", mode, err)
	}
}

func TestZooKeeperStandalone(t *testing.T) {
	z := ZooKeeper(t, 1)
	if mode, err := z.Mode(0); err != nil || mode != "standalone" {
		t.Errorf("mode = %q, %v; want standalone", mode, err)
	}
}

// A TLS server answers only over TLS: its one client port refuses plain
// TCP, and with AuthClients a TLS client without a certificate.
func TestZooKeeperTLSOnly(t *testing.T) {
	ca := TestCA(t)
	start := time.Now()
	z := ZooKeeperWith(t, 1, ZKOptions{TLS: &ZKTLS{CA: ca, AuthClients: true}})
	t.Logf("TLS server serving after %v", time.Since(start))
	if mode, err := z.Mode(0); err != nil || mode != "standalone" {
		t.Fatalf("mode over TLS = %q, %v; want standalone", mode, err)
	}
	if mode, err := zkMode(z.Addr(0), nil); err == nil && mode != "" {
		t.Errorf("plain TCP to %s answered srvr (mode %q); want no plain client port", z.Addr(0), mode)
	}
	noCert := &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12}
	if mode, err := zkMode(z.Addr(0), noCert); err == nil && mode != "" {
		t.Errorf("TLS without a client certificate answered srvr (mode %q); want it refused", mode)
	}
}

// docs/backend-credentials.md gives operators the zoo.cfg lines these tests
// run ZooKeeper with (paths aside).
func TestZooKeeperTLSConfigDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/backend-credentials.md")
	if err != nil {
		t.Fatal(err)
	}
	z := &ZK{opts: ZKOptions{TLS: &ZKTLS{CA: &CA{CertFile: "/ca.pem"}, AuthClients: true}}, keystore: "/keystore.pem"}
	lines := strings.Split(strings.TrimSpace(z.tlsConfig()), "\n")
	lines = append(lines, "secureClientPort=", "secureClientPortAddress=")
	for _, line := range lines {
		key, value, _ := strings.Cut(line, "=")
		want := "\n" + line
		if strings.HasPrefix(value, "/") {
			want = "\n" + key + "="
		}
		if !strings.Contains(string(doc), want) {
			t.Errorf("docs/backend-credentials.md lacks the zoo.cfg line %q", strings.TrimSpace(want))
		}
	}
}
