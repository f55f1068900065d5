package main

import (
	"strings"
	"testing"
	"time"
)

// acquire --lock-delay reaches the server: the lease, never renewed (acquire
// only prints it), expires, and its key stays closed until its deadline
// plus the delay (and the server's 1 s skew): a single try exits held,
// saying why, and a waiting one is granted only when the delay ends.
func TestAcquireLockDelay(t *testing.T) {
	srv := sharedServer(t)
	key := k(t, "ctl-delay")
	start := time.Now()
	wantCode(t, lockctl(t, srv, "acquire", key, "--ttl", "1s", "--lock-delay", "3s"), exitOK)
	time.Sleep(2300 * time.Millisecond) // past the deadline and the skew
	r := lockctl(t, srv, "acquire", key, "--ttl", "5s")
	wantCode(t, r, exitHeld)
	if !strings.Contains(r.stderr, "delayed until") {
		t.Errorf("held inside the lock-delay; stderr does not say so: %s", r.stderr)
	}
	wantCode(t, lockctl(t, srv, "acquire", key, "--ttl", "5s", "--wait", "20s"), exitOK)
	if took := time.Since(start); took < 4900*time.Millisecond {
		t.Errorf("granted %v after the first grant, inside its 1 s TTL + 3 s lock-delay + 1 s skew", took)
	}
	wantCode(t, lockctl(t, srv, "acquire", key, "--lock-delay", "61s"), exitUsage)
}
