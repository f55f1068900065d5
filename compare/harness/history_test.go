package harness

import (
	"strings"
	"testing"
	"time"
)

// TestHistory: every figure measured, and the store's size read before and
// after (the revision grew by two writes a cycle at least).
func TestHistory(t *testing.T) {
	if testing.Short() {
		t.Skip("runs over embedded etcd; skipped with -short")
	}
	d := etcdDeployment(t)
	h := measureHistory(t.Context(), d, 1200, time.Minute, nil)
	if h.Unmeasured != "" {
		t.Fatalf("not measured: %s", h.Unmeasured)
	}
	t.Logf("%+v", *h)
	if h.FirstUs <= 0 || h.LastUs <= 0 || h.FreshUs <= 0 {
		t.Errorf("p50s first %v last %v fresh %v; want all measured", h.FirstUs, h.LastUs, h.FreshUs)
	}
	for _, s := range []string{h.StoreBefore, h.StoreAfter} {
		if !strings.Contains(s, "db file") || !strings.Contains(s, "in use") {
			t.Errorf("store size %q; want etcd's db file and in-use sizes", s)
		}
	}
	if h.StoreBefore == h.StoreAfter {
		t.Errorf("store size unchanged after %d cycles: %q", h.Cycles, h.StoreAfter)
	}
}

// TestHistoryBudget: a budget that runs out skips the rest of the untimed
// middle, still times the last 500, and says so.
func TestHistoryBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("runs over embedded etcd; skipped with -short")
	}
	d := etcdDeployment(t)
	h := measureHistory(t.Context(), d, 1_000_000, time.Millisecond, nil)
	if h.Unmeasured != "" {
		t.Fatalf("not measured: %s", h.Unmeasured)
	}
	if h.Budget == "" || h.Cycles >= h.Asked || h.LastUs <= 0 {
		t.Errorf("cycles %d of %d, budget %q, last p50 %v; want fewer cycles, the reason, and the last 500 timed", h.Cycles, h.Asked, h.Budget, h.LastUs)
	}
}
