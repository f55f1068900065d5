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
