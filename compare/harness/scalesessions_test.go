package harness

import (
	"testing"
	"time"
)

// TestSessionRoundCountsWrites: a renewal round of locks held in sessions
// costs about one store write per session on etcd, however many locks each
// holds, and the counter tells writes from reads.
func TestSessionRoundCountsWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("runs over embedded etcd; skipped with -short")
	}
	d := etcdDeployment(t)
	const locks, sessions = 400, 10
	c := scaleSessions(t.Context(), d, locks, sessions, time.Minute, func(float64) {})
	t.Logf("%+v", c)
	if c.Unmeasured != "" || c.Reached != locks {
		t.Fatalf("held %d of %d locks: %s %s", c.Reached, locks, c.Unmeasured, c.Note)
	}
	// A keep-alive or two of the backend's own may land in the round.
	if c.RoundWrites < sessions || c.RoundWrites > sessions+3 {
		t.Errorf("got %d store writes for a round of %d sessions holding %d locks, want %d (+3 background)", c.RoundWrites, sessions, locks, sessions)
	}
	if c.RoundRequests < c.RoundWrites {
		t.Errorf("got %d requests but %d writes", c.RoundRequests, c.RoundWrites)
	}
}
