package harness

import (
	"testing"
	"time"
)

// TestScaleWaitersMeasureLockdInItsOwnProcess: the waiter step runs lockd
// as a process of its own, every poll reaches the store's queue, and the
// polls share HTTP/2 connections (lockd holds a handful of sockets, not one
// per poll).
func TestScaleWaitersMeasureLockdInItsOwnProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a lockd process over embedded etcd; skipped with -short")
	}
	d := etcdDeployment(t)
	const polls, keys, idle = 300, 3, 20
	c := scaleWaiters(t.Context(), "etcd", "", d, WaitersSpread, polls, keys, time.Minute, idle, func(float64) {})
	t.Logf("%+v", c)
	if c.Unmeasured != "" {
		t.Fatalf("not measured: %s", c.Unmeasured)
	}
	if c.Reached != polls || c.StoreWaiters != polls {
		t.Errorf("got %d polls waiting, %d counted by the store; want %d and %d", c.Reached, c.StoreWaiters, polls, polls)
	}
	if c.Conns != 1 {
		t.Errorf("got %d HTTP/2 connections for %d polls, want 1", c.Conns, polls)
	}
	if c.Sockets >= polls/4 {
		t.Errorf("lockd holds %d sockets with %d polls waiting: the polls do not share a connection", c.Sockets, polls)
	}
	if c.LockdRSS0MB <= 0 || c.LockdRSSMB <= c.LockdRSS0MB {
		t.Errorf("lockd RSS %.1f MB before, %.1f MB with the polls: want both read, and growth", c.LockdRSS0MB, c.LockdRSSMB)
	}
	if c.IdleAcquire == nil || c.IdleAcquire.N != idle {
		t.Errorf("idle-key acquires: got %+v, want %d samples", c.IdleAcquire, idle)
	}
}
