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
	why := func(br *harness.BackendRun) string {
		c := waiterOf(br, step)
		if c == nil {
			return ""
		}
		if unit == " MB" {
			return c.Memory.Summary(c.Reached)
		}
		return cpuSummary("lockd's CPU while they wait, per second", c.CPU)
	}
	return targetSpec{Backend: backend, What: what, Limit: limit, Unit: unit, why: why,
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
		ts = append(ts, leasesTarget(b), sessionsTarget(b),
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

// leasesTarget: 100,000 held leases, every one renewed within the step's
// budget: the value is how many fell short.
func leasesTarget(backend string) targetSpec {
	const want = 100000
	why := func(br *harness.BackendRun) string {
		for _, c := range br.Scale {
			if c.Unmeasured == "" && c.SweepSeconds > 0 {
				return fmt.Sprintf("the sweep renewed %d leases in %.1f s (%.0f a second, 32 clients over HTTP); ", c.Renewals, c.SweepSeconds, float64(c.Renewals)/c.SweepSeconds) +
					cpuSummary("CPU per renewal", c.SweepCPU)
			}
		}
		return ""
	}
	return targetSpec{Backend: backend, What: "held leases not renewed within the step's budget, of 100,000", Limit: 0, Unit: " leases", why: why,
		measure: func(br *harness.BackendRun) (float64, string, bool) {
			for _, c := range br.Scale {
				if c.Unmeasured != "" || c.Wanted == 0 {
					continue
				}
				how := fmt.Sprintf("%d held, %d renewed, %d store writes for the renewal sweep", c.Reached, c.Renewals, c.SweepWrites)
				if c.Wanted < want {
					return 0, fmt.Sprintf("%s of %d wanted, not the target's %d", how, c.Wanted, want), false
				}
				return float64(int64(c.Wanted) - c.Renewals), how, true
			}
			return 0, "", false
		}}
}

// sessionsTarget: one renewal round of 100,000 locks under 1,000
// sessions costs the store 1,000 requests.
func sessionsTarget(backend string) targetSpec {
	const locks, sessions = 100000, 1000
	return targetSpec{Backend: backend, What: "store writes per renewal round, 100,000 locks under 1,000 sessions", Limit: sessions, Unit: " writes",
		measure: func(br *harness.BackendRun) (float64, string, bool) {
			c := br.Sessions
			if c == nil {
				return 0, "", false
			}
			if c.Unmeasured != "" {
				return 0, c.Unmeasured, false
			}
			how := fmt.Sprintf("%d locks held in %d sessions, round in %.2f s, %d requests in all; %d writes counted, less %d the backend wrote on its own over an idle span as long (its background: clock heartbeats, pings)", c.Reached, c.Sessions, c.RoundSeconds, c.RoundRequests, c.RoundWrites, c.IdleWrites)
			for _, l := range br.Scale {
				if l.SweepRequests > 0 {
					how += fmt.Sprintf("; without sessions, renewing %d leases cost %d writes", l.Renewals, l.SweepWrites)
				}
			}
			if c.Locks < locks || c.Sessions != sessions || c.Reached < c.Locks {
				return 0, fmt.Sprintf("measured %d writes with %s, not at the target's %d locks", max(c.RoundWrites-c.IdleWrites, 0), how, locks), false
			}
			return float64(max(c.RoundWrites-c.IdleWrites, 0)), how, true
		}}
}

// sessionsSection shows the sessions step beside the leases sweep.
func sessionsSection(d *doc, ran []*harness.BackendRun) {
	var rows [][]tcell
	for _, br := range ran {
		c := br.Sessions
		if c == nil {
			continue
		}
		if c.Unmeasured != "" {
			rows = append(rows, []tcell{plain(br.Name), plain("not measured: " + c.Unmeasured), plain(""), plain(""), plain(""), plain("")})
			continue
		}
		sweep := "—"
		for _, l := range br.Scale {
			if l.Unmeasured == "" && l.Renewals > 0 {
				sweep = fmt.Sprintf("%d writes (%d requests) for %d leases", l.SweepWrites, l.SweepRequests, l.Renewals)
			}
		}
		rows = append(rows, []tcell{plain(br.Name), plain(fmt.Sprintf("%d of %d in %d sessions", c.Reached, c.Locks, c.Sessions)),
			plain(fmt.Sprintf("%d writes, %.2f per session (%d requests)", c.RoundWrites, float64(c.RoundWrites)/float64(max(c.Sessions, 1)), c.RoundRequests)),
			plain(fmt.Sprintf("%.2f s", c.RoundSeconds)), plain(sweep), plain(c.Note)})
	}
	if len(rows) == 0 {
		return
	}
	d.h3("Many locks in few sessions")
	d.p("Locks acquired in sessions through the backend contract in process, then one renewal round: every session renewed once. Store requests are counted inside lockd's real client (a gRPC interceptor on etcd, a counting connection on ZooKeeper, a go-redis hook on Redis): writes are the requests that change the store (etcd: Txn, Put, DeleteRange, lease grant and revoke; ZooKeeper: create, delete, setData, check, multi; Redis: every command and script, as the hook cannot tell), background traffic included; the leases step's renewal sweep (one renew per lease, without sessions, over HTTP) is counted the same way.")
	d.table([]string{"backend", "locks held", "store writes per renewal round", "round took", "without sessions: renewal sweep", "note"}, rows)
}
