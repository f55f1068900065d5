package report

import (
	"fmt"

	"github.com/lockd/lockd/compare/harness"
)

// The targets of issue 15 this file checks: FIFO by the store's own order,
// lockd's own memory with many waiters, and many leases renewed.

// storeOrderTarget: grants out of the order the store queued their holders
// in, over every lockd row of the handoff and throughput scenarios.
func storeOrderTarget(backend string) targetSpec {
	return targetSpec{Backend: backend, What: "FIFO: out-of-order grants by the store's order (handoff + throughput, lockd rows)", Limit: 0, Unit: " grants",
		measure: func(br *harness.BackendRun) (float64, string, bool) {
			var grants, out int64
			var by, missing string
			var cells int
			add := func(so *harness.StoreOrder) {
				if so == nil {
					return
				}
				if so.Unmeasured != "" {
					missing = so.Unmeasured
					return
				}
				cells++
				grants += so.Grants
				out += so.OutOfOrder
				by = so.By
			}
			for _, c := range br.Handoff {
				add(c.StoreOrder)
			}
			for _, c := range br.Throughput {
				add(c.StoreOrder)
			}
			if cells == 0 {
				return 0, "", false
			}
			how := fmt.Sprintf("of %d grants in %d cells; place in line read from %s", grants, cells, by)
			if missing != "" {
				how += "; a cell not measured: " + missing
			}
			return float64(out), how, true
		}}
}

func scaleTargetSpecs() []targetSpec {
	return []targetSpec{
		storeOrderTarget("etcd"),
		storeOrderTarget("zk"),
		storeOrderTarget("redis"),
	}
}
