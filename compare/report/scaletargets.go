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

// waiterOf is br's waiter step named what, or nil.
func waiterOf(br *harness.BackendRun, what string) *harness.WaiterCell {
	for i := range br.Waiters {
		if br.Waiters[i].What == what {
			return &br.Waiters[i]
		}
	}
	return nil
}

// waiterTarget judges a waiter step only at the size, with every
// poll waiting: a smaller step (-quick) is shown, not judged.
func waiterTarget(backend, what, step string, polls int, limit float64, unit string, value func(c *harness.WaiterCell) (float64, bool)) targetSpec {
	return targetSpec{Backend: backend, What: what, Limit: limit, Unit: unit,
		measure: func(br *harness.BackendRun) (float64, string, bool) {
			c := waiterOf(br, step)
			if c == nil || c.Unmeasured != "" {
				return 0, "", false
			}
			v, ok := value(c)
			got := fmt.Sprintf("%d polls over %d key(s), %d HTTP/2 connection(s)", c.Reached, c.Keys, c.Conns)
			if !ok {
				return 0, got + ": nothing measured", false
			}
			if c.Polls < polls || c.Reached < c.Polls {
				return 0, fmt.Sprintf("measured %s with %s, not at the target's %d polls", fmtTarget(v, unit), got, polls), false
			}
			return v, got, true
		}}
}

func lockdRSS(c *harness.WaiterCell) (float64, bool) { return c.LockdRSSMB, c.LockdRSSMB > 0 }

func idleP99(c *harness.WaiterCell) (float64, bool) {
	if c.IdleAcquire == nil {
		return 0, false
	}
	return c.IdleAcquire.P99, true
}

func scaleTargetSpecs() []targetSpec {
	ts := []targetSpec{
		storeOrderTarget("etcd"),
		storeOrderTarget("zk"),
		storeOrderTarget("redis"),
	}
	for _, b := range []string{"etcd", "zk", "redis", "redlock"} {
		ts = append(ts,
			waiterTarget(b, "lockd's own RSS, 10,000 long polls on one key", harness.WaitersOneKey, 10000, 250, " MB", lockdRSS),
			waiterTarget(b, "lockd's own RSS, 50,000 long polls over 1,000 keys", harness.WaitersSpread, 50000, 1200, " MB", lockdRSS),
			waiterTarget(b, "idle-key acquire p99 while 50,000 polls wait", harness.WaitersSpread, 50000, 5000, "µs", idleP99))
	}
	return ts
}

// waitersSection shows the waiter steps: lockd in a process of its own.
func waitersSection(d *doc, ran []*harness.BackendRun) {
	var rows [][]tcell
	for _, br := range ran {
		for _, c := range br.Waiters {
			if c.Unmeasured != "" {
				rows = append(rows, []tcell{plain(br.Name), plain(c.What), plain("not measured: " + c.Unmeasured), plain(""), plain(""), plain(""), plain(""), plain("")})
				continue
			}
			store := c.StoreRSSNote
			if c.StoreRSSMB > 0 {
				store = fmt.Sprintf("%.1f MB (%+.1f MB, %.1f KB per waiter)", c.StoreRSSMB, c.StoreRSSDeltaMB, c.StorePerWaiterKB)
			}
			idle := "—"
			if c.IdleAcquire != nil {
				idle = fmt.Sprintf("p50 %s, p99 %s (%d)", fmtUS(c.IdleAcquire.P50), fmtUS(c.IdleAcquire.P99), c.IdleAcquire.N)
			}
			rows = append(rows, []tcell{plain(br.Name), plain(c.What),
				plain(fmt.Sprintf("%d of %d over %d key(s), %d conn(s); store counted %d", c.Reached, c.Polls, c.Keys, c.Conns, c.StoreWaiters)),
				plain(fmt.Sprintf("%.1f MB (%.1f MB before; %.1f KB per waiter)", c.LockdRSSMB, c.LockdRSS0MB, c.PerWaiterKB)),
				plain(fmt.Sprint(c.Sockets)), plain(store), plain(idle), plain(c.Note)})
		}
	}
	if len(rows) == 0 {
		return
	}
	d.h3("Waiters: lockd in its own process")
	d.p("lockd runs as a process of its own (compare re-run as lockd: internal/httpapi with no limits, HTTP/1.1 and h2c) over the store; each key is held, and the polls wait on it through HTTP/2 connections of %d polls each (h2c with prior knowledge, as the Go client's Options.HTTP2). lockd's memory is its process's VmRSS while they wait, so the clients' memory is not in it; the store's is the VmRSS of its server processes (embedded etcd runs inside compare, beside the clients, so it cannot be read apart: run -backends etcd-ext for etcd's own). Idle acquire: single-try acquires of another key over an HTTP/1.1 connection of its own while the polls wait.", harness.PollsPerConn)
	d.table([]string{"backend", "what", "polls", "lockd RSS", "lockd sockets", "store RSS (change)", "idle-key acquire", "note"}, rows)
}
