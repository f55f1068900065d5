package report

import (
	"fmt"
	"sort"
	"strings"

	"github.com/lockd/lockd/compare/harness"
)

// profilesSection shows where each uncontended row's time went: the CPU
// profile taken over the row, per acquire+release cycle.
func profilesSection(d *doc, ran []*harness.BackendRun) {
	found := false
	for _, br := range ran {
		for _, c := range br.Latency {
			found = found || c.CPU != nil
		}
	}
	if !found {
		return
	}
	d.h2("Where the time goes (CPU profiles of the uncontended rows)")
	d.p("Each uncontended row above ran under a CPU profile of the compare process (runtime/pprof, 100 samples a CPU-second; its own cost is in every row alike). CPU is per acquire+release cycle: this process's, split by who spent it (lockd's HTTP server and API; lockd's backend; the store's client library, lockd's or the direct library's, whichever the row drives; the compare's own client; the embedded store when it runs in this process; the runtime), and by the package doing the work, runtime work charged to what it served where the stack says (an allocation to its caller's package). A store in processes of its own is charged their CPU time over the same span (/proc/<pid>/stat). Wall time per cycle is the p50 above; the rest of it is waiting on the network and the store. The raw profiles are beside the report (`go tool pprof -top <file>`).")
	for _, br := range ran {
		var rows [][]tcell
		for _, c := range br.Latency {
			p := c.CPU
			switch {
			case p == nil:
				continue
			case p.Unmeasured != "":
				rows = append(rows, []tcell{plain(c.Via), plain("not profiled: " + p.Unmeasured), plain(""), plain(""), plain(""), plain("")})
				continue
			}
			store := "—"
			if p.StorePerCycleUS > 0 {
				store = fmtUS(p.StorePerCycleUS)
			}
			rows = append(rows, []tcell{plain(c.Via), plain(fmtUS(p.PerCycleUS)), plain(store), plain(partsList(p.Sides, 6)), plain(partsList(p.Parts, 8)), plain(p.File)})
		}
		if len(rows) == 0 {
			continue
		}
		d.h3(br.Name)
		d.table([]string{"via", "CPU / cycle (this process)", "store processes' CPU / cycle", "by side", "by package (top)", "raw profile"}, rows)
	}
}

func partsList(ps []harness.CPUPart, n int) string {
	var out []string
	for i, p := range ps {
		if i == n {
			break
		}
		out = append(out, fmt.Sprintf("%s %s", p.Name, fmtUS(p.PerCycleUS)))
	}
	return strings.Join(out, "; ")
}

// cpuGap says where via a spends more CPU per cycle than via b, from their
// profiles: this process's and the store's, and the packages that grew
// most. "" when either row has no profile.
func cpuGap(br *harness.BackendRun, a, b string) string {
	pa, pb := br.CPUOf(a), br.CPUOf(b)
	if pa == nil || pb == nil {
		return ""
	}
	s := fmt.Sprintf("CPU per cycle %s (%s) against %s (%s)", fmtUS(pa.PerCycleUS), a, fmtUS(pb.PerCycleUS), b)
	if pa.StorePerCycleUS > 0 || pb.StorePerCycleUS > 0 {
		s += fmt.Sprintf(", the store's processes %s against %s", fmtUS(pa.StorePerCycleUS), fmtUS(pb.StorePerCycleUS))
	}
	type grow struct {
		name string
		by   float64
	}
	var gs []grow
	for _, set := range [][2][]harness.CPUPart{{pa.Sides, pb.Sides}} {
		names := map[string]bool{}
		for _, p := range set[0] {
			names[p.Name] = true
		}
		for _, p := range set[1] {
			names[p.Name] = true
		}
		for n := range names {
			if by := pa.Part(n) - pb.Part(n); by > 0 {
				gs = append(gs, grow{n, by})
			}
		}
	}
	sort.Slice(gs, func(i, j int) bool { return gs[i].by > gs[j].by })
	if len(gs) > 4 {
		gs = gs[:4]
	}
	var parts []string
	for _, g := range gs {
		parts = append(parts, fmt.Sprintf("%s +%s", g.name, fmtUS(g.by)))
	}
	if len(parts) > 0 {
		s += "; more CPU in " + strings.Join(parts, ", ")
	}
	// The top package of a's own extra work, for a pointer into the code.
	var top []string
	for _, p := range pa.Parts {
		if p.Name == "everything else" {
			continue
		}
		if by := p.PerCycleUS - pb.Part(p.Name); by > 0 && len(top) < 3 {
			top = append(top, fmt.Sprintf("%s +%s", p.Name, fmtUS(by)))
		}
	}
	if len(top) > 0 {
		s += "; by package: " + strings.Join(top, ", ")
	}
	return s
}

// roundTripGap compares store requests per cycle of via a and via b from
// the roundtrips row. "" when either is missing.
func roundTripGap(br *harness.BackendRun, a, b string) string {
	ra, rb := roundTripsOf(br, a), roundTripsOf(br, b)
	if ra == nil || rb == nil {
		return ""
	}
	return fmt.Sprintf("store requests per cycle %.2f (%s) against %.2f (%s)", ra.PerAcquire+ra.PerRelease, a, rb.PerAcquire+rb.PerRelease, b)
}

// whyGap joins the profile and round-trip comparisons of a and b.
func whyGap(br *harness.BackendRun, a, b string) string {
	var s []string
	if g := cpuGap(br, a, b); g != "" {
		s = append(s, g)
	}
	if g := roundTripGap(br, a, b); g != "" {
		s = append(s, g)
	}
	return strings.Join(s, "; ")
}

// roundTripsOf is via's store requests; lockd in process sends what lockd
// over HTTP does (the HTTP layer adds none), so it reads lockd's row.
func roundTripsOf(br *harness.BackendRun, via string) *harness.RoundTripCell {
	if c := br.RoundTripsOf(via); c != nil || !strings.HasPrefix(via, "lockd") {
		return c
	}
	for _, c := range br.RoundTrips {
		if strings.HasPrefix(c.Via, "lockd") {
			return br.RoundTripsOf(c.Via)
		}
	}
	return nil
}

// cpuSummary says in one line where a profile's CPU went.
func cpuSummary(what string, p *harness.CPUProfile) string {
	if p == nil || p.Unmeasured != "" {
		return ""
	}
	s := fmt.Sprintf("%s: this process %s", what, fmtUS(p.PerCycleUS))
	if p.StorePerCycleUS > 0 {
		s += fmt.Sprintf(", the store's processes %s", fmtUS(p.StorePerCycleUS))
	}
	s += "; by side: " + partsList(p.Sides, 4) + "; by package: " + partsList(p.Parts, 4)
	if p.File != "" {
		s += " (profile " + p.File + ")"
	}
	return s
}
