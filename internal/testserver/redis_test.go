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
