package harness

import (
	"testing"
	"time"
)

// TestHandoffsOf: a re-win is not a handoff, and a grant that returns before
// the previous holder sent its release is a violation, not a sample.
func TestHandoffsOf(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	ev := func(client, called, granted, released int) grantEvent {
		return grantEvent{Client: client, Called: at(called), Granted: at(granted), ReleaseSent: at(released)}
	}
	// A, A again (a re-win), then B 3 ms after A's second release.
	got := handoffsOf([]grantEvent{ev(0, 0, 1, 2), ev(0, 2, 3, 10), ev(1, 0, 13, 14)})
	if got.Handoffs != 1 || got.ReWins != 1 || got.Hist.TotalCount() != 1 {
		t.Errorf("A, A, B: handoffs %d, re-wins %d, samples %d; want 1, 1, 1", got.Handoffs, got.ReWins, got.Hist.TotalCount())
	}
	if p := percentiles(got.Hist); p == nil || p.Max < 2900 || p.Max > 3100 {
		t.Errorf("A, A, B: handoff latency %+v, want 3 ms (from the second release)", p)
	}
	// B is granted 5 ms before A sends its release: two holders at once.
	got = handoffsOf([]grantEvent{ev(0, 0, 1, 10), ev(1, 0, 5, 12)})
	if got.EarlyGrants != 1 || got.Handoffs != 0 || got.Hist.TotalCount() != 0 {
		t.Errorf("B before A's release: early grants %d, handoffs %d, samples %d; want 1, 0, 0", got.EarlyGrants, got.Handoffs, got.Hist.TotalCount())
	}
}
