package harness

import (
	"strings"
	"testing"
	"time"
)

// TestPlanCountsConcurrentSoaksOnce: the plan's total adds the sequential
// steps and the longest soak once when the soaks run side by side, and the
// ETA falls to zero when the last step is done.
func TestPlanCountsConcurrentSoaksOnce(t *testing.T) {
	var out strings.Builder
	steps := []planStep{
		{backend: "a", scenario: "latency", est: 10 * time.Second},
		{backend: "a", scenario: "soak", est: 5 * time.Minute},
		{backend: "b", scenario: "latency", est: 20 * time.Second},
		{backend: "b", scenario: "soak", est: 5 * time.Minute},
	}
	p := newPlanner(&out, steps, true)
	if !strings.Contains(out.String(), "estimated total 5m30s") {
		t.Errorf("plan:\n%s\nwant an estimated total of 5m30s (10 s + 20 s + one 5 min soak)", out.String())
	}
	p.done("a", "latency", 12*time.Second)
	if !strings.Contains(out.String(), "about 5m20s to go") {
		t.Errorf("after a's latency:\n%s\nwant about 5m20s to go", out.String())
	}
	p.done("b", "latency", 20*time.Second)
	st := p.done("a", "soak", 5*time.Minute)
	if !strings.HasSuffix(strings.TrimSpace(out.String()), "about 0s to go") || !st.Concurrent {
		t.Errorf("after the last step:\n%s\nwant about 0s to go, and the soak marked concurrent (got %+v)", out.String(), st)
	}
	// The soaks end together: the second keeps its own estimate (the full
	// run showed 0s for every soak after the first).
	if st := p.done("b", "soak", 5*time.Minute); st.Estimate != (5 * time.Minute).Seconds() {
		t.Errorf("second soak's estimate = %.0f s, want 300", st.Estimate)
	}
	var seq strings.Builder
	newPlanner(&seq, steps, false)
	if !strings.Contains(seq.String(), "estimated total 10m30s") {
		t.Errorf("sequential soaks: plan\n%s\nwant 10m30s", seq.String())
	}
}
