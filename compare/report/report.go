// Package report renders compare's Results as Markdown and as one
// self-contained HTML file with SVG charts. Every number and every
// correctness verdict (the check table) comes from compare/harness; the
// report never turns a red check green. It only compares the performance
// targets of issue 5 with the measured numbers.
package report

import (
	"github.com/lockd/lockd/compare/harness"

	"fmt"
	"sort"
	"strings"
	"time"
)

// targetSpec is a goal from issue 5, checked against this run's numbers.
type targetSpec struct {
	Backend string
	What    string
	Limit   float64
	Unit    string
	measure func(br *harness.BackendRun) (float64, string, bool) // value, how it was computed, ok
	// why, when set, says where the cost of a missed target lies, from the
	// run's profiles ("" when it has none to say).
	why func(br *harness.BackendRun) string
}

// overheadTarget: lockd in process (the backend contract, no HTTP) against
// the store's best direct library, uncontended p50.
func overheadTarget(backend, direct string, limit float64) targetSpec {
	return targetSpec{Backend: backend, What: "in-process lockd/" + direct + " uncontended p50", Limit: limit, Unit: "×",
		why: func(br *harness.BackendRun) string { return whyGap(br, harness.ViaContract, direct) },
		measure: func(br *harness.BackendRun) (float64, string, bool) {
			l, d := br.LatencyOf(harness.ViaContract), br.LatencyOf(direct)
			if l == nil || d == nil {
				return 0, "", false
			}
			return l.P50 / d.P50, fmt.Sprintf("%s / %s", fmtUS(l.P50), fmtUS(d.P50)), true
		}}
}

// httpOverheadTarget: lockd as its users call it, over HTTP, against the
// store's best direct library, uncontended p50 (issue 15).
func httpOverheadTarget(backend, direct string, limit float64) targetSpec {
	return targetSpec{Backend: backend, What: "lockd over HTTP/" + direct + " uncontended p50", Limit: limit, Unit: "×",
		why: func(br *harness.BackendRun) string { return whyGap(br, harness.ViaHTTP, direct) },
		measure: func(br *harness.BackendRun) (float64, string, bool) {
			h, d := br.LatencyOf(harness.ViaHTTP), br.LatencyOf(direct)
			if h == nil || d == nil {
				return 0, "", false
			}
			return h.P50 / d.P50, fmt.Sprintf("%s / %s", fmtUS(h.P50), fmtUS(d.P50)), true
		}}
}

// httpHopTarget: what the HTTP layer adds per request, p50 on loopback: the
// HTTP and in-process acquire+release p50s apart, over the two requests.
func httpHopTarget(backend string) targetSpec {
	return targetSpec{Backend: backend, What: "HTTP hop per request (p50, loopback)", Limit: 60, Unit: "µs",
		why: func(br *harness.BackendRun) string { return whyGap(br, harness.ViaHTTP, harness.ViaContract) },
		measure: func(br *harness.BackendRun) (float64, string, bool) {
			h, c := br.LatencyOf(harness.ViaHTTP), br.LatencyOf(harness.ViaContract)
			if h == nil || c == nil {
				return 0, "", false
			}
			return (h.P50 - c.P50) / 2, fmt.Sprintf("(%s over HTTP − %s in process) / 2 requests", fmtUS(h.P50), fmtUS(c.P50)), true
		}}
}

func targetSpecs() []targetSpec {
	return append([]targetSpec{
		overheadTarget("etcd", "concurrency.Mutex", 1.10),
		overheadTarget("zk", "zk.Lock", 1.10),
		overheadTarget("redis", "SET NX PX", 1.30),
		httpOverheadTarget("etcd", "concurrency.Mutex", 1.25),
		httpOverheadTarget("zk", "zk.Lock", 1.25),
		httpOverheadTarget("redis", "SET NX PX", 2.0),
		httpHopTarget("etcd"),
		httpHopTarget("zk"),
		httpHopTarget("redis"),
		httpHopTarget("redlock"),
		{Backend: "redis", What: "handoff p50, 1 waiter", Limit: 1000, Unit: "µs", measure: func(br *harness.BackendRun) (float64, string, bool) {
			h := br.HandoffOf(br.LockdVia(), 1)
			if h == nil {
				return 0, "", false
			}
			return h.P50, "", true
		}},
		{Backend: "etcd", What: "handoff p99, 1 waiter", Limit: 10000, Unit: "µs", measure: func(br *harness.BackendRun) (float64, string, bool) {
			h := br.HandoffOf(br.LockdVia(), 1)
			if h == nil {
				return 0, "", false
			}
			return h.P99, "", true
		}},
		{Backend: "zk", What: "handoff p50 lockd/zk.Lock, 1 waiter", Limit: 1.2, Unit: "×", measure: func(br *harness.BackendRun) (float64, string, bool) {
			l, d := br.HandoffOf(br.LockdVia(), 1), br.HandoffOf("zk.Lock", 1)
			if l == nil || d == nil {
				return 0, "", false
			}
			return l.P50 / d.P50, fmt.Sprintf("%s / %s", fmtUS(l.P50), fmtUS(d.P50)), true
		}},
	}, scaleTargetSpecs()...)
}

func fmtUS(us float64) string {
	switch {
	case us >= 1e6:
		return fmt.Sprintf("%.2f s", us/1e6)
	case us >= 1000:
		return fmt.Sprintf("%.2f ms", us/1000)
	default:
		return fmt.Sprintf("%.0f µs", us)
	}
}

func fmtTarget(v float64, unit string) string {
	if unit == "µs" {
		return fmtUS(v)
	}
	if strings.HasPrefix(unit, " ") { // a count: " grants", " MB"
		return fmt.Sprintf("%.0f%s", v, unit)
	}
	return fmt.Sprintf("%.2f%s", v, unit)
}

// Markdown renders the report as Markdown.
func Markdown(r *harness.Results) string { return buildReport(r).markdown() }

// HTML renders the report as one self-contained HTML file (inline CSS and
// SVG; no script, no link).
func HTML(r *harness.Results) string { return buildReport(r).html() }

func buildReport(r *harness.Results) *doc {
	d := &doc{}
	d.h1("lockd backends compared")
	mode := "full"
	if r.Quick {
		mode = "quick (-quick: scaled down, a smoke run; do not quote its numbers)"
	}
	meta := []string{
		fmt.Sprintf("Run: %s, took %s, mode %s", r.Started.UTC().Format(time.RFC3339), r.Finished.Sub(r.Started).Round(time.Second), mode),
		fmt.Sprintf("Machine: %s, %d cores, %s memory, %s", r.Machine.CPU, r.Machine.Cores, r.Machine.MemoryGB, r.Machine.OS),
		fmt.Sprintf("Go: %s; seed %d; measuring time per cell %s", r.GoVersion, r.Seed, r.Duration),
		fmt.Sprintf("lockd driven as: **%s**", r.Lockd),
		fmt.Sprintf("Declared clock skew the checks allow: %s (declared, not injected)", r.MaxClockSkew),
	}
	for _, br := range r.Backends {
		if br.Skipped != "" {
			meta = append(meta, fmt.Sprintf("%s: **skipped** (%s); install: `%s`", br.Name, br.Skipped, br.Install))
		} else {
			meta = append(meta, fmt.Sprintf("%s: %s, %s", br.Name, br.Server, br.Version))
			if br.LockdMissing != "" {
				meta = append(meta, fmt.Sprintf("%s: **lockd not measured** (%s); its direct libraries were", br.Name, br.LockdMissing))
			}
			for _, n := range br.Notes {
				meta = append(meta, fmt.Sprintf("%s: %s", br.Name, n))
			}
			if len(br.NotRun) > 0 {
				var names []string
				for _, n := range br.NotRun {
					names = append(names, n.Scenario)
				}
				meta = append(meta, fmt.Sprintf("%s: **not run**: %s (%s)", br.Name, strings.Join(names, ", "), br.NotRun[0].Why))
			}
		}
	}
	d.list(meta...)
	if r.Lockd != "lockd (HTTP)" {
		d.p("**lockd was driven without its HTTP layer (-no-http)**: the lockd columns measure the backend contract called in process. Overhead ratios therefore leave out HTTP's cost.")
	}
	if len(r.Scaled) > 0 {
		d.p("Scaled down in this run:")
		d.list(r.Scaled...)
	}
	if r.Lockd == "lockd (HTTP)" {
		d.p("lockd runs in this process: internal/httpapi over the backend under test, served on a loopback port; every lockd number is a real HTTP/1.1 request made with plain net/http, one connection pool per client.")
	}
	d.p("Numbers compare only within this run on this machine. Every number below was measured in this run; a cell that could not be measured says why.")

	ran := []*harness.BackendRun{}
	for _, br := range r.Backends {
		if br.Skipped == "" {
			ran = append(ran, br)
		}
	}
	verdicts(d, r, ran)
	targetsSection(d, ran)
	latencySection(d, ran)
	profilesSection(d, ran)
	handoffSection(d, ran)
	throughputSection(d, ran)
	roundTripSection(d, ran)
	semaphoreSection(d, ran)
	rwlockSection(d, ran)
	scaleSection(d, ran)
	waitersSection(d, ran)
	sessionsSection(d, ran)
	correctnessSection(d, ran)
	skewSection(d, ran)
	lostReplySection(d, ran)
	historySection(d, ran)
	electionSection(d, ran)
	meaningSection(d, ran)
	d.h2("Not measured by this version of compare")
	d.p("These faults are not injected by this suite, so nothing above is evidence about them:")
	d.list(notMeasured()...)
	d.h2("How each scenario works")
	var items []string
	for _, s := range harness.Scenarios() {
		if contains(r.Scenarios, s.Name) {
			items = append(items, fmt.Sprintf("**%s** (`%s`): %s.", s.Title, s.Name, s.About))
		}
	}
	d.list(items...)
	d.p("Correctness workload: clients loop acquire (waiting) → read a counter → think (0..2 ms) → write counter+1 → release, on one key. Every critical section touches two registers at once: a fenced one that refuses a token lower than the highest it accepted, and an unfenced one that accepts everything, so one run measures both modes. Clients behave as the real Go client does: a grant that arrives with less than two thirds of its TTL left (counted from the acquire's send) is renewed at once, and a lease past its deadline is never used to start or finish a critical section; only the pause fault can make a holder write late. A mutual-exclusion violation is a critical section entered while another client is inside its own and both leases are unexpired by their holders' own clocks (deadline = send time of the last successful acquire or renew + TTL); overlaps in which either lease had run out are counted apart (fencing is what protects the resource then). Grants are numbered in the order their holders enter the critical section (a grant that is never used supersedes nobody), and a write is stale when a later grant's holder has already written: the resource has seen the successor, so a fence with rising tokens refuses it. A superseded holder's write that lands before its successor's first write is not stale (no fence can refuse it; it is counted as superseded, and if it costs an increment the lost-increment check shows it). The whole history is checked with porcupine against a fenced-mutex model (grants in real-time order carry increasing tokens; each critical section is one atomic read-modify-write; in fenced mode a refused write changes nothing); acquires that failed or timed out constrain nothing (unknown outcome).")
	runTimeSection(d, r, ran)
	return d
}

func verdicts(d *doc, r *harness.Results, ran []*harness.BackendRun) {
	d.h2("Verdict")
	if len(ran) == 0 {
		d.p("No backend could run: nothing was measured.")
		return
	}
	head := []string{"scenario"}
	for _, br := range ran {
		head = append(head, br.Name)
	}
	var rows [][]tcell
	for _, s := range harness.Scenarios() {
		if s.Perf || s.Section || !contains(r.Scenarios, s.Name) {
			continue
		}
		row := []tcell{plain(s.Title)}
		for _, br := range ran {
			c := br.CorrectnessOf(s.Name)
			switch {
			case c == nil:
				row = append(row, plain("not run"))
			case c.Unmeasured != "":
				row = append(row, plain("not measured: "+c.Unmeasured))
			default:
				cls, v := "pass", fmt.Sprintf("all %d checks that apply green", applying(c))
				if !c.Pass {
					cls, v = "fail", "RED: "+strings.Join(c.Why, "; ")
				}
				txt := fmt.Sprintf("%s\navailability %.1f%%, longest outage %s\nME violations %d (overlaps with an expired lease %d); fenced: %d stale refused\nunfenced: %d stale accepted, %d lost",
					v, 100*c.Availability, fmtMS(c.LongestUnavailMs), c.Overlaps, c.ExpiredOverlaps, c.Fenced.StaleRejected, c.Unfenced.StaleAccepted, c.Unfenced.LostIncrements)
				if len(c.TimeToFreeMs) > 0 {
					txt += fmt.Sprintf("\nfree after holder death: %s", fmtMSList(c.TimeToFreeMs))
				}
				row = append(row, tcell{text: txt, class: cls})
			}
		}
		rows = append(rows, row)
	}
	for _, t := range targetSpecs() {
		row := []tcell{plain("target: " + t.What)}
		any := false
		for _, br := range ran {
			if br.Name != t.Backend {
				row = append(row, plain("—"))
				continue
			}
			any = true
			v, how, ok := t.measure(br)
			if !ok && how != "" {
				row = append(row, plain("not judged: "+how))
				continue
			}
			if !ok {
				row = append(row, plain("not measured (a latency or handoff cell is missing)"))
				continue
			}
			cls := "pass"
			if v > t.Limit {
				cls = "fail"
			}
			txt := fmt.Sprintf("%s (target ≤ %s)", fmtTarget(v, t.Unit), fmtTarget(t.Limit, t.Unit))
			if how != "" {
				txt += "\n" + how
			}
			row = append(row, tcell{text: txt, class: cls})
		}
		if any {
			rows = append(rows, row)
		}
	}
	var early []tcell
	anyHandoff := false
	for _, br := range ran {
		var n int64
		for _, c := range br.Handoff {
			n += c.EarlyGrants
		}
		if len(br.Handoff) > 0 {
			anyHandoff = true
			early = append(early, earlyCell(n))
		} else {
			early = append(early, plain("not run"))
		}
	}
	if anyHandoff {
		rows = append(rows, append([]tcell{plain("handoff: granted before the release was sent")}, early...))
	}
	d.table(head, rows)
	d.p("A correctness cell is green only when every check that applies is green (the check table below names each check, its threshold and what was measured); a red cell names the checks that failed and by how much. The unfenced numbers show what the same lock history would have done to a resource that does not check tokens.")
	checkTableSection(d, r, ran)
}

func applying(c *harness.CorrectnessCell) int {
	n := 0
	for _, ch := range c.Checks {
		if ch.Applies {
			n++
		}
	}
	return n
}

// checkTableSection shows, per backend, every named check of every
// correctness scenario with its threshold.
func checkTableSection(d *doc, r *harness.Results, ran []*harness.BackendRun) {
	d.h3("Check table")
	d.p("Each check is shown to fail: compare/harness's mutation tests wrap the real etcd backend in a broken one (grants twice, hands out a lower token, reuses a dead holder's token, ignores FIFO, stalls past the wait, never frees a dead holder's lock, elects twice, hands out a lower term, grants a permit beyond N, hands out a lower permit token, reuses a live permit's slot, shares the write lock) and assert that the matching check turns red. The two election checks come from a leadership workload that runs beside the lock workload in every cell, on the same replicas and under the same fault: a few clients campaign for an election of their own and use their term as a fence, stopping at their own send-time deadline. Thresholds: time to free and longest outage allow TTL + the declared clock skew + 1 s, plus the fault's own window where the store was out of reach.")
	primitiveWorkloadsNote(d, ran)
	var scens []harness.Scenario
	for _, s := range harness.Scenarios() {
		if !s.Perf && !s.Section && contains(r.Scenarios, s.Name) {
			scens = append(scens, s)
		}
	}
	for _, br := range ran {
		if len(br.Correctness) == 0 {
			continue
		}
		head := []string{br.Name + ": check"}
		for _, s := range scens {
			head = append(head, s.Name)
		}
		var rows [][]tcell
		for _, name := range harness.CheckNames {
			row := []tcell{plain(name)}
			for _, s := range scens {
				c := br.CorrectnessOf(s.Name)
				if c == nil || c.Unmeasured != "" {
					row = append(row, plain("not measured"))
					continue
				}
				ch := c.CheckOf(name)
				switch {
				case ch == nil:
					row = append(row, plain("—"))
				case !ch.Applies:
					row = append(row, plain("n/a: "+ch.NotApplicable))
				case ch.Pass:
					row = append(row, tcell{text: ch.Got + "\n(" + ch.Threshold + ")", class: "pass"})
				default:
					row = append(row, tcell{text: ch.Got + "\n(" + ch.Threshold + ")", class: "fail"})
				}
			}
			rows = append(rows, row)
		}
		d.table(head, rows)
	}
}

func fmtMS(v float64) string { return fmtUS(v * 1000) }

func fmtMSList(vs []float64) string {
	var s []string
	for _, v := range vs {
		s = append(s, fmtMS(v))
	}
	return strings.Join(s, ", ")
}

func targetsSection(d *doc, ran []*harness.BackendRun) {
	d.h2("Targets")
	d.p("Overhead is measured so that its cause shows: lockd in process (the backend contract, no HTTP) against the store's direct library is the backend's own cost; lockd over HTTP against lockd in process, halved for the two requests of a cycle, is HTTP's. Targets (issues 12 and 15): in-process lockd/direct uncontended p50 ≤ 1.10× on etcd and ZooKeeper, ≤ 1.30× on Redis; over HTTP ≤ 1.25× and ≤ 2.0×; the HTTP hop ≤ 60 µs p50 per request on loopback. Handoff targets from issue 5.")
	var items []string
	for _, t := range targetSpecs() {
		var br *harness.BackendRun
		for _, b := range ran {
			if b.Name == t.Backend {
				br = b
			}
		}
		if br == nil {
			items = append(items, fmt.Sprintf("%s — %s ≤ %s: not measured (backend not run).", t.Backend, t.What, fmtTarget(t.Limit, t.Unit)))
			continue
		}
		v, how, ok := t.measure(br)
		switch {
		case !ok && how != "":
			item := fmt.Sprintf("%s — %s ≤ %s: not judged: %s.", t.Backend, t.What, fmtTarget(t.Limit, t.Unit), how)
			if t.why != nil {
				if w := t.why(br); w != "" {
					item += " Where the cost is: " + w + "."
				}
			}
			items = append(items, item)
		case !ok:
			items = append(items, fmt.Sprintf("%s — %s ≤ %s: not measured (a needed cell is missing).", t.Backend, t.What, fmtTarget(t.Limit, t.Unit)))
		case v <= t.Limit:
			items = append(items, fmt.Sprintf("%s — %s: **%s, met** (target ≤ %s) %s", t.Backend, t.What, fmtTarget(v, t.Unit), fmtTarget(t.Limit, t.Unit), how))
		default:
			item := fmt.Sprintf("%s — %s: **%s, MISSED** (target ≤ %s) %s", t.Backend, t.What, fmtTarget(v, t.Unit), fmtTarget(t.Limit, t.Unit), how)
			if t.why != nil {
				if w := t.why(br); w != "" {
					item += ". Where the cost is: " + w
				}
			}
			items = append(items, item)
		}
	}
	d.list(items...)
}

func latencySection(d *doc, ran []*harness.BackendRun) {
	d.h2("Uncontended acquire + release latency")
	for _, br := range ran {
		if len(br.Latency) == 0 {
			continue
		}
		d.h3(br.Name)
		lockd := br.LatencyOf(br.LockdVia())
		var rows [][]tcell
		var ss []series
		for _, c := range br.Latency {
			if c.Lat == nil {
				rows = append(rows, []tcell{plain(c.Via), plain("not measured: " + c.Unmeasured), plain(""), plain(""), plain(""), plain(""), plain(""), plain(""), plain("")})
				continue
			}
			ratio, inproc := "—", "—"
			if lockd != nil && !strings.HasPrefix(c.Via, "lockd") {
				ratio = fmt.Sprintf("%.2f×", lockd.P50/c.Lat.P50)
			}
			if ip := br.LatencyOf(harness.ViaContract); ip != nil && !strings.HasPrefix(c.Via, "lockd") {
				inproc = fmt.Sprintf("%.2f×", ip.P50/c.Lat.P50)
			}
			rows = append(rows, []tcell{plain(c.Via), plain(fmt.Sprint(c.Lat.N)), plain(fmtUS(c.Lat.P50)), plain(fmtUS(c.Lat.P90)),
				plain(fmtUS(c.Lat.P99)), plain(fmtUS(c.Lat.P999)), plain(fmtUS(c.Lat.Max)), plain(ratio), plain(inproc)})
			ss = append(ss, series{Name: c.Via, Pts: c.CDF})
		}
		d.table([]string{"via", "samples", "p50", "p90", "p99", "p99.9", "max", br.LockdVia() + " p50 / this p50", "lockd in process p50 / this p50"}, rows)
		d.chart(chart{Title: br.Name + ": acquire+release latency CDF", XLabel: "latency (µs, log scale)", YLabel: "fraction ≤ x", LogX: true, YMax: 1, Series: ss})
	}
}

func handoffSection(d *doc, ran []*harness.BackendRun) {
	d.h2("Contended handoff")
	d.p("Handoff = from the moment a holder sends its release to the moment the next grant to a different client returns. Re-wins: grants that went straight back to the client that had just released; they are not handoffs and are not timed. Granted before release: a grant to another client that returned before the holder had sent its release — two holders at once, a mutual-exclusion violation (red), never a latency sample. FIFO violation: a grant to a client whose acquire was sent more than %s after that of a client still waiting.", harness.FIFOSlack)
	for _, br := range ran {
		if len(br.Handoff) == 0 {
			continue
		}
		d.h3(br.Name)
		var rows [][]tcell
		var ss []series
		for _, c := range br.Handoff {
			if c.Lat == nil {
				rows = append(rows, []tcell{plain(c.Via), plain(fmt.Sprint(c.Waiters)), plain("not measured: " + c.Unmeasured), plain(""), plain(""), plain(""), plain(""), plain(""), plain(""), earlyCell(c.EarlyGrants)})
				continue
			}
			rows = append(rows, []tcell{plain(c.Via), plain(fmt.Sprint(c.Waiters)), plain(fmt.Sprint(c.Handoffs)), plain(fmtUS(c.Lat.P50)),
				plain(fmtUS(c.Lat.P99)), plain(fmtUS(c.Lat.Max)), plain(fmt.Sprintf("%d of %d", c.ReWins, c.Grants)), plain(fmt.Sprint(c.FIFOViolations)), plain(fmtMS(c.LongestWaitMs)), earlyCell(c.EarlyGrants)})
			ss = append(ss, series{Name: fmt.Sprintf("%s, %d w", c.Via, c.Waiters), Pts: c.CDF})
		}
		d.table([]string{"via", "waiters", "handoffs", "p50", "p99", "max", "re-wins", "FIFO violations", "longest wait", "granted before release"}, rows)
		d.chart(chart{Title: br.Name + ": handoff latency CDF", XLabel: "handoff latency (µs, log scale)", YLabel: "fraction ≤ x", LogX: true, YMax: 1, Series: ss})
	}
}

func throughputSection(d *doc, ran []*harness.BackendRun) {
	d.h2("Throughput")
	d.p("Through lockd and the first direct library of each backend. Closed loop: each client acquires (waiting up to 5 s) a key drawn at random among the keys, then releases it. CPU is this whole process's (getrusage) per 1,000 grants: load generator plus lockd, plus the embedded server for etcd; the direct rows show the same load generator without lockd, so the difference is lockd's share.")
	for _, br := range ran {
		if len(br.Throughput) == 0 {
			continue
		}
		d.h3(br.Name)
		var rows [][]tcell
		byKeys := map[int]map[string][][2]float64{}
		for _, c := range br.Throughput {
			if c.Unmeasured != "" {
				rows = append(rows, []tcell{plain(c.Via), plain(fmt.Sprint(c.Clients)), plain(fmt.Sprint(c.Keys)), plain("not measured: " + c.Unmeasured), plain(""), plain("")})
				continue
			}
			rows = append(rows, []tcell{plain(c.Via), plain(fmt.Sprint(c.Clients)), plain(fmt.Sprint(c.Keys)), plain(fmt.Sprintf("%.0f", c.PerSec)),
				plain(fmt.Sprintf("%.3f", c.CPUPer1000)), plain(fmt.Sprint(c.Errors))})
			if byKeys[c.Keys] == nil {
				byKeys[c.Keys] = map[string][][2]float64{}
			}
			byKeys[c.Keys][c.Via] = append(byKeys[c.Keys][c.Via], [2]float64{float64(c.Clients), c.PerSec})
		}
		d.table([]string{"via", "clients", "keys", "grants/s", "process CPU s / 1,000 grants", "errors"}, rows)
		var keys []int
		for k := range byKeys {
			keys = append(keys, k)
		}
		sort.Ints(keys)
		for _, k := range keys {
			var ss []series
			var vias []string
			for v := range byKeys[k] {
				vias = append(vias, v)
			}
			sort.Strings(vias)
			for _, v := range vias {
				ss = append(ss, series{Name: v, Pts: byKeys[k][v]})
			}
			d.chart(chart{Title: fmt.Sprintf("%s: grants/s vs clients, %d key(s)", br.Name, k), XLabel: "clients (log scale)", YLabel: "grants/s", LogX: true, Series: ss})
		}
	}
}

func correctnessSection(d *doc, ran []*harness.BackendRun) {
	d.h2("Correctness details")
	for _, br := range ran {
		if len(br.Correctness) == 0 {
			continue
		}
		d.h3(br.Name)
		var rows [][]tcell
		for _, c := range br.Correctness {
			if c.Unmeasured != "" {
				rows = append(rows, []tcell{plain(c.Scenario), plain("not measured: " + c.Unmeasured)})
				continue
			}
			free := "—"
			if len(c.TimeToFreeMs) > 0 {
				free = fmtMSList(c.TimeToFreeMs)
			}
			rows = append(rows, []tcell{plain(c.Scenario), plain(fmt.Sprintf(
				"%d attempts, %d granted, %d timed out, %d failed, %d vanished; availability %.1f%%; longest outage %s; free after holder death %s\n"+
					"ME violations %d (overlaps in which a lease had run out: %d); stalls after a vanished waiter %d; acquires that overran their wait by > 1 s: %d (longest %s)\n"+
					"tokens not above an earlier grant's: %d\n"+
					"fenced: %d writes, %d stale refused, %d stale accepted, %d superseded before the successor wrote, %d lost; check %s (%d ops)\n"+
					"unfenced: %d writes, %d stale accepted, %d lost; check %s",
				c.Attempts, c.Granted, c.TimedOut, c.Errors, c.Vanished, 100*c.Availability, fmtMS(c.LongestUnavailMs), free,
				c.Overlaps, c.ExpiredOverlaps, c.StalledVanish, c.Overran, fmtMS(c.LongestCallMs), c.TokenRegressions,
				c.Fenced.Writes, c.Fenced.StaleRejected, c.Fenced.StaleAccepted, c.Fenced.Superseded, c.Fenced.LostIncrements, c.Fenced.Check.Result, c.Fenced.Check.Ops,
				c.Unfenced.Writes, c.Unfenced.StaleAccepted, c.Unfenced.LostIncrements, c.Unfenced.Check.Result))})
		}
		d.table([]string{"scenario", "measured"}, rows)
		for _, c := range br.Correctness {
			var lines []string
			lines = append(lines, c.Events...)
			if c.LongestUnavailMs >= 1000 {
				lines = append(lines, fmt.Sprintf("longest outage: no grant from %.2fs to %.2fs", c.LongestUnavailFromS, c.LongestUnavailFromS+c.LongestUnavailMs/1000))
			}
			if c.FirstError != "" {
				lines = append(lines, "first failed acquire: "+c.FirstError)
			}
			if c.FirstOverlap != "" {
				lines = append(lines, "first mutual-exclusion violation: "+c.FirstOverlap)
			}
			if c.FirstStale != "" {
				lines = append(lines, "first stale write accepted with fencing: "+c.FirstStale)
			}
			if c.FirstFIFO != "" {
				lines = append(lines, "first FIFO violation: "+c.FirstFIFO)
			}
			if c.Unconfirmed+c.Unused > 0 {
				lines = append(lines, fmt.Sprintf("grants a careful client did not use: %d whose at-once renew after a long wait failed, %d whose deadline passed first", c.Unconfirmed, c.Unused))
			}
			if c.Fenced.Check.FirstViolation != "" {
				lines = append(lines, "fenced history, first violating interleaving:\n"+c.Fenced.Check.FirstViolation)
			}
			if c.Unfenced.Check.FirstViolation != "" {
				lines = append(lines, "unfenced history, first violating interleaving:\n"+c.Unfenced.Check.FirstViolation)
			}
			if len(lines) > 0 {
				d.p("**%s / %s**:", br.Name, c.Scenario)
				d.pre(strings.Join(lines, "\n"))
			}
		}
	}
}

// meaningSection states, backend by backend, only what the numbers above
// show.
func meaningSection(d *doc, ran []*harness.BackendRun) {
	d.h2("What this means for choosing a backend")
	if len(ran) == 0 {
		d.p("Nothing ran, so nothing can be said.")
		return
	}
	var items []string
	// Safety.
	for _, br := range ran {
		var unsafe, safe []string
		for _, c := range br.Correctness {
			if c.Unmeasured != "" {
				continue
			}
			if c.Pass {
				safe = append(safe, c.Scenario)
			} else {
				unsafe = append(unsafe, fmt.Sprintf("%s (%s)", c.Scenario, strings.Join(c.Why, "; ")))
			}
		}
		switch {
		case len(unsafe) > 0:
			items = append(items, fmt.Sprintf("**%s** was unsafe in this run under: %s.", br.Name, strings.Join(unsafe, ", ")))
		case len(safe) > 0:
			items = append(items, fmt.Sprintf("**%s** kept locks safe (with fencing) in every scenario run: %s.", br.Name, strings.Join(safe, ", ")))
		}
		var saved []string
		for _, c := range br.Correctness {
			if c.Unmeasured == "" && c.Unfenced.StaleAccepted > 0 {
				saved = append(saved, fmt.Sprintf("%s: %d stale writes, %d lost increments", c.Scenario, c.Unfenced.StaleAccepted, c.Unfenced.LostIncrements))
			}
		}
		if len(saved) > 0 {
			items = append(items, fmt.Sprintf("On %s, a resource that ignores tokens would have accepted %s — fencing refused them.", br.Name, strings.Join(saved, "; ")))
		}
	}
	// Speed: rank lockd's uncontended p50 and 1-waiter handoff p50.
	type rank struct {
		name string
		v    float64
	}
	var lat, hand []rank
	for _, br := range ran {
		if l := br.LatencyOf(br.LockdVia()); l != nil {
			lat = append(lat, rank{br.Name, l.P50})
		}
		if h := br.HandoffOf(br.LockdVia(), 1); h != nil {
			hand = append(hand, rank{br.Name, h.P50})
		}
	}
	order := func(rs []rank) string {
		sort.Slice(rs, func(i, j int) bool { return rs[i].v < rs[j].v })
		var s []string
		for _, r := range rs {
			s = append(s, fmt.Sprintf("%s %s", r.name, fmtUS(r.v)))
		}
		return strings.Join(s, " < ")
	}
	if len(lat) > 1 {
		items = append(items, "Uncontended acquire+release through lockd, p50: "+order(lat)+".")
	} else if len(lat) == 1 {
		items = append(items, fmt.Sprintf("Uncontended acquire+release through lockd on %s: p50 %s (only one backend ran, nothing to rank).", lat[0].name, fmtUS(lat[0].v)))
	}
	if len(hand) > 1 {
		items = append(items, "Handoff to the next waiter through lockd, p50 with 1 waiter: "+order(hand)+".")
	} else if len(hand) == 1 {
		items = append(items, fmt.Sprintf("Handoff through lockd on %s, p50 with 1 waiter: %s.", hand[0].name, fmtUS(hand[0].v)))
	}
	for _, br := range ran {
		l := br.LatencyOf(br.LockdVia())
		if l == nil {
			continue
		}
		var parts []string
		for _, c := range br.Latency {
			if c.Lat != nil && !strings.HasPrefix(c.Via, "lockd") {
				parts = append(parts, fmt.Sprintf("%.2f× that of %s", l.P50/c.Lat.P50, c.Via))
			}
		}
		if len(parts) > 0 {
			items = append(items, fmt.Sprintf("On %s, lockd's uncontended p50 (%s) is %s.", br.Name, fmtUS(l.P50), strings.Join(parts, " and ")))
		}
		for _, c := range br.Handoff {
			if c.Waiters != 1 || c.Lat == nil || strings.HasPrefix(c.Via, "lockd") {
				continue
			}
			if h := br.HandoffOf(br.LockdVia(), 1); h != nil {
				items = append(items, fmt.Sprintf("On %s, handing the lock to a waiting client takes %s p50 / %s p99 through lockd and %s / %s with %s.", br.Name, fmtUS(h.P50), fmtUS(h.P99), fmtUS(c.Lat.P50), fmtUS(c.Lat.P99), c.Via))
			}
		}
	}
	var best []rank
	for _, br := range ran {
		top := 0.0
		for _, c := range br.Throughput {
			if strings.HasPrefix(c.Via, "lockd") && c.PerSec > top {
				top = c.PerSec
			}
		}
		if top > 0 {
			best = append(best, rank{br.Name, top})
		}
	}
	if len(best) > 0 {
		sort.Slice(best, func(i, j int) bool { return best[i].v > best[j].v })
		var s []string
		for _, r := range best {
			s = append(s, fmt.Sprintf("%s %.0f/s", r.name, r.v))
		}
		items = append(items, "Highest lockd throughput seen in the matrix: "+strings.Join(s, ", ")+".")
	}
	for _, br := range ran {
		var parts []string
		for _, c := range br.Handoff {
			if c.Lat != nil {
				parts = append(parts, fmt.Sprintf("%s with %d waiter(s): %d of %d grants", c.Via, c.Waiters, c.FIFOViolations, c.Grants))
			}
		}
		if len(parts) > 0 {
			items = append(items, fmt.Sprintf("Out-of-arrival-order grants on %s — %s.", br.Name, strings.Join(parts, "; ")))
		}
	}
	if len(items) == 0 {
		items = append(items, "No cell was measured, so nothing can be said.")
	}
	d.list(items...)
}

func roundTripSection(d *doc, ran []*harness.BackendRun) {
	d.h2("Store round trips per lock")
	d.p("Requests sent to the store per uncontended acquire and per release, counted inside the real client, averaged over the samples. The floor for a safe lock is one linearizable write per acquire. Background traffic in the window (session pings, lease keep-alives) is included.")
	for _, br := range ran {
		if len(br.RoundTrips) == 0 {
			continue
		}
		d.h3(br.Name)
		var rows [][]tcell
		how := ""
		for _, c := range br.RoundTrips {
			how = c.Counted
			if c.Unmeasured != "" {
				rows = append(rows, []tcell{plain(c.Via), plain("not measured: " + c.Unmeasured), plain(""), plain("")})
				continue
			}
			rows = append(rows, []tcell{plain(c.Via), plain(fmt.Sprintf("%.2f", c.PerAcquire)), plain(fmt.Sprintf("%.2f", c.PerRelease)), plain(fmt.Sprint(c.Samples))})
		}
		d.table([]string{"via", "requests / acquire", "requests / release", "samples"}, rows)
		if how != "" {
			d.p("Counted by: %s.", how)
		}
	}
}

func scaleSection(d *doc, ran []*harness.BackendRun) {
	d.h2("Scale: memory")
	d.p("Process memory is the Go heap and stacks in use in this process after a GC, minus the same before the step: lockd and the clients it serves together (and the embedded server for etcd); the peak is the highest sample (every 100 ms) during the step. A step stops early when the process passes %d MB (the machine is shared). Store memory is the resident set of the store's server processes.", harness.MemCap>>20)
	var rows [][]tcell
	for _, br := range ran {
		for _, c := range br.Scale {
			if c.Unmeasured != "" {
				rows = append(rows, []tcell{plain(br.Name), plain(c.What), plain("not measured: " + c.Unmeasured), plain(""), plain(""), plain("")})
				continue
			}
			store := c.StoreRSSNote
			if c.StoreRSSMB > 0 {
				store = fmt.Sprintf("%.1f MB (%+.1f MB)", c.StoreRSSMB, c.StoreRSSDeltaMB)
			}
			reached := fmt.Sprintf("%d of %d", c.Reached, c.Wanted)
			if c.Renewals > 0 {
				reached += fmt.Sprintf(", %d renewals", c.Renewals)
			}
			rows = append(rows, []tcell{plain(br.Name), plain(c.What), plain(reached), plain(fmt.Sprintf("%+.1f MB (peak %.0f MB)", c.ProcessMB, c.PeakMB)), plain(store), plain(c.Note)})
		}
	}
	if len(rows) > 0 {
		d.table([]string{"backend", "what", "reached", "process (lockd + clients)", "store RSS (change)", "note"}, rows)
	}
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

// earlyCell shows grants that came before the release: any is a violation.
func earlyCell(n int64) tcell {
	if n > 0 {
		return tcell{text: fmt.Sprintf("%d (violation)", n), class: "fail"}
	}
	return tcell{text: "0", class: "pass"}
}
