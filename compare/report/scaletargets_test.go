package report

import (
	"strings"
	"testing"

	"github.com/lockd/lockd/compare/harness"
)

// TestStoreOrderTargetShowsMetAndMissed: the FIFO row sums every lockd
// cell's store-order count and shows it met only at 0.
func TestStoreOrderTargetShowsMetAndMissed(t *testing.T) {
	run := func(out int64) string {
		r := &harness.Results{Lockd: harness.ViaHTTP, Backends: []*harness.BackendRun{{Name: "redis",
			Handoff:    []harness.HandoffCell{{Via: harness.ViaHTTP, Waiters: 1, StoreOrder: &harness.StoreOrder{Grants: 100, OutOfOrder: out, By: "MONITOR"}}},
			Throughput: []harness.ThroughputCell{{Via: harness.ViaHTTP, StoreOrder: &harness.StoreOrder{Grants: 50, By: "MONITOR"}}},
		}}}
		return Markdown(r)
	}
	if md := run(0); !strings.Contains(md, "redis — FIFO: out-of-order grants by the store's order (handoff + throughput, lockd rows): **0 grants, met** (target ≤ 0 grants) of 150 grants in 2 cells") {
		t.Errorf("no met FIFO row for 0 out of order:\n%s", grepLines(md, "FIFO"))
	}
	if md := run(3); !strings.Contains(md, "**3 grants, MISSED**") {
		t.Errorf("no missed FIFO row for 3 out of order:\n%s", grepLines(md, "FIFO"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestWaiterTargetsJudgedOnlyAtSize: a waiter step smaller than the
// issue's (-quick) is shown, not judged; at size it is met or missed.
func TestWaiterTargetsJudgedOnlyAtSize(t *testing.T) {
	md := func(polls, reached int, rss float64) string {
		return Markdown(&harness.Results{Lockd: harness.ViaHTTP, Backends: []*harness.BackendRun{{Name: "zk",
			Waiters: []harness.WaiterCell{{What: harness.WaitersOneKey, Polls: polls, Reached: reached, Keys: 1, Conns: 10, LockdRSSMB: rss}}}}})
	}
	const row = "zk — lockd's own RSS, 10,000 long polls on one key"
	for _, tc := range []struct {
		polls, reached int
		rss            float64
		want           string
	}{
		{500, 500, 60, row + " ≤ 250 MB: not judged: measured 60 MB with 500 polls"},
		{10000, 9000, 200, row + " ≤ 250 MB: not judged: measured 200 MB with 9000 polls"},
		{10000, 10000, 200, row + ": **200 MB, met**"},
		{10000, 10000, 931, row + ": **931 MB, MISSED**"},
	} {
		if got := md(tc.polls, tc.reached, tc.rss); !strings.Contains(got, tc.want) {
			t.Errorf("%d of %d polls, %.0f MB: report lacks %q:\n%s", tc.reached, tc.polls, tc.rss, tc.want, grepLines(got, "10,000 long polls"))
		}
	}
}

// TestSessionsTargetCountsWrites: the sessions row is judged on the round's
// store writes, at the size only.
func TestSessionsTargetCountsWrites(t *testing.T) {
	md := func(locks, reached int, writes, idle int64) string {
		return Markdown(&harness.Results{Lockd: harness.ViaHTTP, Backends: []*harness.BackendRun{{Name: "etcd",
			Sessions: &harness.SessionCell{Locks: locks, Sessions: 1000, Reached: reached, RoundWrites: writes, IdleWrites: idle, RoundRequests: 2 * writes}}}})
	}
	const row = "etcd — store writes per renewal round, 100,000 locks under 1,000 sessions"
	for _, tc := range []struct {
		locks, reached int
		writes, idle   int64
		want           string
	}{
		{2000, 2000, 20, 0, row + " ≤ 1000 writes: not judged: measured 20 writes"},
		{100000, 100000, 1000, 0, row + ": **1000 writes, met**"},
		{100000, 100000, 2000, 0, row + ": **2000 writes, MISSED**"},
		// The backend's own background write in the window is told apart
		// by an idle span as long, and shown.
		{100000, 100000, 1001, 1, row + ": **1000 writes, met** (target ≤ 1000 writes) 100000 locks held in 1000 sessions, round in 0.00 s, 2002 requests in all; 1001 writes counted, less 1 the backend wrote on its own"},
		{100000, 100000, 1003, 1, row + ": **1002 writes, MISSED**"},
	} {
		if got := md(tc.locks, tc.reached, tc.writes, tc.idle); !strings.Contains(got, tc.want) {
			t.Errorf("%d locks, %d writes: report lacks %q:\n%s", tc.locks, tc.writes, tc.want, grepLines(got, "renewal round"))
		}
	}
}
