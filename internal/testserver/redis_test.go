package testserver

import "testing"

func TestRedisStartKillRestart(t *testing.T) {
	r := Redis(t, 2)
	if got := len(r.Addrs()); got != 2 {
		t.Fatalf("%d addrs, want 2", got)
	}
	for i, a := range r.Addrs() {
		if err := redisPing(a); err != nil {
			t.Fatalf("server %d (%s): %v", i, a, err)
		}
	}
	if err := r.Kill(1); err != nil {
		t.Fatal(err)
	}
	if err := redisPing(r.Addr(1)); err == nil {
		t.Fatalf("killed server still answers")
	}
	if err := redisPing(r.Addr(0)); err != nil {
		t.Fatalf("server 0 after killing server 1: %v", err)
	}
	if err := r.Restart(1); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	if err := redisPing(r.Addr(1)); err != nil {
		t.Fatalf("restarted server: %v", err)
	}
}

// TLS-only servers with a password and an ACL user come back with the same
// settings after a kill and a restart; a plain-TCP client gets nowhere.
func TestRedisSecuredRestart(t *testing.T) {
	ca := TestCA(t)
	r := RedisWith(t, 1, RedisOptions{
		Password: "s3cret",
		Users:    []string{"app on >apppw ~app:* -@all +ping"},
		TLS:      &RedisTLS{CA: ca, AuthClients: true},
	})
	if err := redisPing(r.Addr(0)); err == nil {
		t.Fatalf("a plain-TCP PING to the TLS-only server succeeded")
	}
	if err := redisProbe(r.Addr(0), r.ClientTLS()); err != nil {
		t.Fatalf("TLS probe: %v", err)
	}
	if err := r.Restart(0); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	if err := redisProbe(r.Addr(0), r.ClientTLS()); err != nil {
		t.Fatalf("TLS probe after restart: %v", err)
	}
	noCert := r.ClientTLS()
	noCert.Certificates = nil
	if err := redisProbe(r.Addr(0), noCert); err == nil {
		t.Fatalf("a client without a certificate got an answer from a server with tls-auth-clients yes")
	}
}
