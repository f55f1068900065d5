package report

import (
	"fmt"

	"github.com/lockd/lockd/compare/harness"
)

func passCell(ok bool, text string) tcell {
	if ok {
		return tcell{text: text, class: "pass"}
	}
	return tcell{text: text, class: "fail"}
}

// skewSection: the clock-skew scenario, with what the bound prevents.
func skewSection(d *doc, ran []*harness.BackendRun) {
	var rows [][]tcell
	for _, br := range ran {
		s := br.Skew
		if s == nil {
			continue
		}
		if s.Unmeasured != "" {
			rows = append(rows, []tcell{plain(br.Name), plain("not measured: " + s.Unmeasured), plain(""), plain(""), plain("")})
			continue
		}
		below := passCell(s.Below.Pass && s.Checks[0].Pass, fmt.Sprintf("shift %s: %d grants, %d double grants; %s", s.BelowShift, s.Below.Granted, s.Below.Overlaps, s.Checks[0].Got))
		over := passCell(s.NotReady, fmt.Sprintf("shift %s: %s", s.AboveShift, s.Checks[1].Got))
		without := plain(fmt.Sprintf("%d double grants in %d grants (overlaps with an expired lease: %d)", s.WithoutGate.Overlaps, s.WithoutGate.Granted, s.WithoutGate.ExpiredOverlaps))
		rows = append(rows, []tcell{plain(br.Name), plain(s.MaxSkew), below, over, without})
	}
	if len(rows) == 0 {
		return
	}
	d.h2("Clock skew between lockd replicas")
	d.p("Two lockd replicas over one store, clients split between them; replica 1's clock is shifted ahead (lease.Clock.Shifted). Both run lockd's clock watch (WatchClock every 200 ms) and replica 1's /readyz is polled every 100 ms. The last column is the same run (with 20 ms critical sections, so that a stolen lock shows as an overlap) with the skewed replica still serving, as a deployment that ignores /readyz would: the double grants the bound and the readiness gate exist to prevent. It is shown, not judged.")
	d.table([]string{"backend", "declared bound", "inside the bound: safe and ready", "beyond the bound: not ready", "beyond, had it kept serving"}, rows)
}

// lostReplySection: orphaned grants with the key, blocked keys without.
func lostReplySection(d *doc, ran []*harness.BackendRun) {
	var rows [][]tcell
	var about *harness.LostReplyResult
	for _, br := range ran {
		r := br.LostReplies
		if r == nil {
			continue
		}
		if r.Unmeasured != "" {
			rows = append(rows, []tcell{plain(br.Name), plain("not measured: " + r.Unmeasured), plain(""), plain("")})
			continue
		}
		about = r
		keyed := passCell(r.Pass, fmt.Sprintf("%d orphaned of %d lost (%d recovered by the retry)", r.Keyed.Orphaned, r.Keyed.Lost, r.Keyed.Recovered))
		un := fmt.Sprintf("%d keys blocked of %d lost", r.Unkeyed.Blocked, r.Unkeyed.Lost)
		if len(r.Unkeyed.BlockedMs) > 0 {
			un += ", for " + fmtMSList(r.Unkeyed.BlockedMs)
		}
		var errs []string
		errs = append(errs, r.Keyed.Errors...)
		errs = append(errs, r.Unkeyed.Errors...)
		e := "none"
		if len(errs) > 0 {
			e = fmt.Sprintf("%d: %s", len(errs), errs[0])
		}
		rows = append(rows, []tcell{plain(br.Name), keyed, plain(un), plain(e)})
	}
	if len(rows) == 0 {
		return
	}
	d.h2("Lost replies")
	if about != nil {
		d.p("Per backend and per mode, %d acquires (wait 0, TTL %s, each on its own key) go through toxiproxy while a timeout toxic swallows everything lockd sends back; the client gives up after %s, the toxic is lifted and the client retries once. Then another client asks for the key: if it is still taken, the first client's lost grant holds it. Check: %s = 0.",
			about.Rounds, fmtMS(about.TTLms), fmtMS(about.GiveUpMs), harness.CheckOrphanedGrants)
	}
	d.table([]string{"backend", "retry with the same Idempotency-Key", "retry without one", "errors"}, rows)
}

// historySection: one key's latency after a long history, and the store's size.
func historySection(d *doc, ran []*harness.BackendRun) {
	var rows [][]tcell
	for _, br := range ran {
		h := br.History
		if h == nil {
			continue
		}
		if h.Unmeasured != "" {
			rows = append(rows, []tcell{plain(br.Name), plain("not measured: " + h.Unmeasured), plain(""), plain(""), plain(""), plain("")})
			continue
		}
		cycles := fmt.Sprint(h.Cycles)
		if h.Budget != "" {
			cycles += fmt.Sprintf(" of %d asked (%s)", h.Asked, h.Budget)
		}
		rows = append(rows, []tcell{plain(br.Name), plain(cycles), plain(fmtUS(h.FirstUs)),
			plain(fmt.Sprintf("%s (%.2f× the first)", fmtUS(h.LastUs), h.LastUs/h.FirstUs)),
			plain(fmt.Sprintf("%s (last/fresh %.2f×)", fmtUS(h.FreshUs), h.LastUs/h.FreshUs)),
			plain("before: " + h.StoreBefore + "\nafter: " + h.StoreAfter)})
	}
	if len(rows) == 0 {
		return
	}
	d.h2("Long history")
	d.p("Acquire + release on one key, back to back, through lockd's backend in process (the HTTP hop does not depend on history). A store slowed by history in general slows the fresh key too; one slowed by this key's history slows only the last 500. The embedded etcd compacts its history (as lockd's embedded store does); ZooKeeper and Redis keep none.")
	d.table([]string{"backend", "cycles", "p50, first 500", "p50, last 500", "p50, fresh key alternated with the last 500", "store size"}, rows)
}

// notMeasured is the edge of the evidence: every fault the suite does not
// inject. Keep it in step with the scenarios.
func notMeasured() []string {
	return []string{
		"A clock jump or drift on a store server: a Redis node's clock (which breaks Redlock's expiry, Kleppmann's case), a ZooKeeper leader's clock (lockd's zk backend measures replicas against it), an etcd member's clock. A machine's clock cannot be moved safely on a shared machine; only lockd replicas' clocks are shifted, in process, through lease.Clock (clock-skew).",
		"A real lockd process paused or killed: lockd runs inside compare, so a replica \"kill\" closes its server and backend, and a \"pause\" holds its HTTP requests and replies at a gate (soak); the backend's own background traffic (etcd lease keep-alives, ZooKeeper session pings) goes on during such a pause, unlike under SIGSTOP.",
		"SIGSTOP of an embedded etcd member (it runs in this process); the external etcd column (etcd-ext), ZooKeeper and Redis members are stopped for real in the soak.",
		"A Redis failover to a lagging replica (Sentinel or Cluster), and a Redis restarted with persistence: the suite runs Redis masters without replicas and without persistence only.",
		"Disk faults: a full disk or etcd's space quota (NOSPACE), a slow or lying fsync, a lost data directory.",
		"Partitions between store members, asymmetric or partial partitions, packet loss, reordering, duplication and bandwidth limits: the network faults are a cut and latency between lockd and every store member at once, and lost replies between the client and lockd.",
		"A pause of a client during its acquire (the replies read after the lease already ran out): the pause scenario stalls a holder after its grant.",
		"Lost replies between lockd and the store (a store write that succeeded but whose answer lockd never got): only replies from lockd to its client are dropped.",
		"Membership changes (adding, removing or replacing a store member) and rolling upgrades of lockd or of the store.",
		"Election failover under store faults: the election scenario kills the leader's process only; a store member killed or cut during an election, and a leader paused (SIGSTOP) past its TTL, are not injected.",
		"Clients that misbehave on purpose (guessing lease ids, replaying another client's idempotency key).",
	}
}
