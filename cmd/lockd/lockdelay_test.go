package main

import (
	"io"
	"testing"
	"time"
)

// --lock-delay (and LOCKD_LOCK_DELAY) takes whole milliseconds in 0..60s.
func TestLockDelayFlag(t *testing.T) {
	none := func(string) string { return "" }
	if c, err := parseFlags(nil, none, io.Discard); err != nil || c.lockDelay != 0 {
		t.Errorf("default --lock-delay: %v (%v), want 0", c.lockDelay, err)
	}
	env := func(k string) string {
		if k == "LOCKD_LOCK_DELAY" {
			return "2500ms"
		}
		return ""
	}
	if c, err := parseFlags(nil, env, io.Discard); err != nil || c.lockDelay != 2500*time.Millisecond {
		t.Errorf("LOCKD_LOCK_DELAY=2500ms: %v (%v), want 2.5s", c.lockDelay, err)
	}
	for _, bad := range []string{"-1s", "61s", "1500us"} {
		if _, err := parseFlags([]string{"--lock-delay", bad}, none, io.Discard); err == nil {
			t.Errorf("--lock-delay %s accepted, want an error", bad)
		}
	}
}
