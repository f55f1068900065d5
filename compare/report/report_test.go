package report

import (
	"strings"
	"testing"

	"github.com/lockd/lockd/compare/harness"
)

// TestRedCellNamesTheFailedCheck: the verdict table shows a red cell with
// the failed check, and the check table shows every check with its
// threshold.
func TestRedCellNamesTheFailedCheck(t *testing.T) {
	cell := harness.CorrectnessCell{Scenario: "nofault", Attempts: 10, Granted: 10, Availability: 1,
		Checks: []harness.Check{
			{Name: harness.CheckMutualExclusion, Threshold: "0 overlaps of two valid leases", Got: "3 overlaps of two valid leases", Applies: true},
			{Name: harness.CheckTokenOrder, Threshold: "0 grants with a token not above an earlier one", Got: "0", Applies: true, Pass: true},
		},
		Why: []string{"mutual exclusion: 3 overlaps of two valid leases (threshold 0 overlaps of two valid leases)"}}
	r := &harness.Results{Lockd: "lockd (HTTP)", Scenarios: []string{"nofault"},
		Backends: []*harness.BackendRun{{Name: "etcd", Correctness: []harness.CorrectnessCell{cell}}}}
	md := Markdown(r)
	for _, want := range []string{"❌ RED: mutual exclusion: 3 overlaps", "| mutual exclusion | ❌ 3 overlaps of two valid leases<br>(0 overlaps of two valid leases) |", "| token order | ✅ 0<br>"} {
		if !strings.Contains(md, want) {
			t.Errorf("report.md lacks %q", want)
		}
	}
	if html := HTML(r); !strings.Contains(html, `<td class="fail">RED: mutual exclusion`) {
		t.Errorf("report.html has no red verdict cell naming the check")
	}
}

// TestSectionScenariosHaveNoVerdictRow: lost replies are reported in their
// own section; the verdict table must not claim they were not run.
func TestSectionScenariosHaveNoVerdictRow(t *testing.T) {
	r := &harness.Results{Scenarios: []string{"nofault", "lost-replies"}, Backends: []*harness.BackendRun{{
		Name:        "etcd",
		Correctness: []harness.CorrectnessCell{{Scenario: "nofault", Unmeasured: "stand-in"}},
		LostReplies: &harness.LostReplyResult{Rounds: 4, Keyed: harness.LostReplyMode{Lost: 4, Recovered: 4}, Unkeyed: harness.LostReplyMode{Lost: 4, Blocked: 4}, Pass: true},
	}}}
	md := Markdown(r)
	if strings.Contains(md, "| Lost replies |") || strings.Contains(md, "| lost-replies |") {
		t.Errorf("the verdict or check table has a lost-replies column or row; it has its own section")
	}
	if !strings.Contains(md, "## Lost replies") {
		t.Errorf("no Lost replies section")
	}
}

// TestElectionSectionNamesTheFailedCheck: election failover has its own
// section (no verdict row); a red cell names the failed check, and etcd's
// observer, which never reports no leader, says so instead of a time.
func TestElectionSectionNamesTheFailedCheck(t *testing.T) {
	red := harness.ElectionCell{Via: harness.ViaHTTP, TTLms: 2000,
		Rounds: []harness.ElectionRound{{LeaderTerm: 2, NextTerm: 3, NoLeaderMs: -1, ElectedMs: 1, ObservedMs: -1, DoubleLeader: true}},
		Checks: []harness.Check{{Name: harness.CheckDoubleLeader, Threshold: "0 leaders elected while the previous one was still valid", Got: "1 of 1 rounds", Applies: true}}}
	green := harness.ElectionCell{Via: harness.ViaEtcdElection, TTLms: 2000, Pass: true,
		Rounds: []harness.ElectionRound{{LeaderTerm: 6, NextTerm: 7, NoLeaderMs: -1, ElectedMs: 2100, ObservedMs: 2101}}}
	r := &harness.Results{Scenarios: []string{"election"}, Backends: []*harness.BackendRun{{
		Name: "etcd", Election: &harness.ElectionResult{Cells: []harness.ElectionCell{red, green}}}}}
	md := Markdown(r)
	for _, want := range []string{"## Election failover", "❌ RED: double leader: 1 of 1 rounds", "✅ double leader 0, terms rising", "never (its observer reports leaders only)", "2.10 s"} {
		if !strings.Contains(md, want) {
			t.Errorf("report.md lacks %q", want)
		}
	}
	if strings.Contains(md, "✅ ✅") || strings.Contains(md, "❌ ❌") {
		t.Errorf("a check mark twice in one cell")
	}
	if strings.Contains(md, "| Election failover |") {
		t.Errorf("election failover has a verdict row; it has its own section")
	}
}

// TestPrimitiveRows: the semaphore and read-write lock sections show the
// measured rows, and a backend without the primitive says so with the
// capabilities' reason instead of a number; the verdict table has no row
// for them (they are perf rows).
func TestPrimitiveRows(t *testing.T) {
	lat := &harness.Percentiles{N: 10, P50: 700, P99: 4000, Max: 5000}
	r := &harness.Results{Scenarios: []string{"semaphores", "rwlocks"}, Backends: []*harness.BackendRun{
		{Name: "redis",
			Semaphores: &harness.SemaphorePerf{Via: harness.ViaHTTP, Direct: "none: redsync has Mutex only",
				Throughput: []harness.SemThroughputCell{{Permits: 1, Clients: 2, PerSec: 1336}, {Permits: 4, Clients: 8, PerSec: 898}},
				Handoff:    &harness.SemHandoffCell{Permits: 4, Waiters: 2, Handoffs: 10, Lat: lat}},
			RWLocks: &harness.RWLockPerf{Via: harness.ViaHTTP, Direct: "none: redsync has Mutex only",
				Flood: []harness.RWFloodCell{{Readers: 4, HoldMs: 10, Writes: 10, WriterWait: lat, Reads: 255, ReadsPerS: 255}}}},
		{Name: "redlock",
			Semaphores: &harness.SemaphorePerf{Via: harness.ViaHTTP, Unsupported: "semaphores is null in /v1/capabilities, with no reason given"},
			RWLocks:    &harness.RWLockPerf{Via: harness.ViaHTTP, Unsupported: "fairness needs one queue"}},
	}}
	md := Markdown(r)
	for _, want := range []string{"## Semaphores", "| N = 1 (2 clients) | N = 4 (8 clients) |", "| 1336 grants/s | 898 grants/s | 700 µs |",
		"n/a (not supported: semaphores is null in /v1/capabilities, with no reason given)", "## Read-write locks",
		"| redis | lockd (HTTP) | 4 | 700 µs (10 writes) |", "n/a (not supported: fairness needs one queue)"} {
		if !strings.Contains(md, want) {
			t.Errorf("report.md lacks %q", want)
		}
	}
	if strings.Contains(md, "| Semaphores |") {
		t.Errorf("the semaphores rows have a verdict row")
	}
}

// TestHTTPOverheadTarget: lockd over HTTP against the direct library is a
// target row of its own (issue 15), met or missed by the ratio of p50s.
func TestHTTPOverheadTarget(t *testing.T) {
	run := func(httpP50 float64) string {
		r := &harness.Results{Scenarios: []string{"latency"}, Backends: []*harness.BackendRun{{Name: "etcd", Latency: []harness.LatencyCell{
			{Via: harness.ViaHTTP, Lat: &harness.Percentiles{P50: httpP50}},
			{Via: harness.ViaContract, Lat: &harness.Percentiles{P50: 1000}},
			{Via: "concurrency.Mutex", Lat: &harness.Percentiles{P50: 1000}},
		}}}}
		return Markdown(r)
	}
	if md := run(1500); !strings.Contains(md, "etcd — lockd over HTTP/concurrency.Mutex uncontended p50: **1.50×, MISSED** (target ≤ 1.25×) 1.50 ms / 1.00 ms") {
		t.Errorf("1.5× over HTTP is not shown missed:\n%s", md)
	}
	if md := run(1200); strings.Contains(md, "lockd over HTTP/concurrency.Mutex uncontended p50: **1.20×, MISSED**") || !strings.Contains(md, "1.20×") {
		t.Errorf("1.2× over HTTP is not shown met")
	}
}

// A missed target says where the cost is, from the rows' CPU profiles: the
// HTTP hop names the side that grew between lockd in process and over HTTP.
func TestMissedTargetSaysWhereTheCostIs(t *testing.T) {
	prof := func(total float64, sides ...harness.CPUPart) *harness.CPUProfile {
		return &harness.CPUProfile{Cycles: 100, PerCycleUS: total, Sides: sides, Parts: sides}
	}
	r := &harness.Results{Scenarios: []string{"latency"}, Backends: []*harness.BackendRun{{Name: "redis", Latency: []harness.LatencyCell{
		{Via: harness.ViaHTTP, Lat: &harness.Percentiles{P50: 600}, CPU: prof(500, harness.CPUPart{Name: harness.SideLockdHTTP, PerCycleUS: 300}, harness.CPUPart{Name: harness.SideLockdBackend, PerCycleUS: 100})},
		{Via: harness.ViaContract, Lat: &harness.Percentiles{P50: 250}, CPU: prof(100, harness.CPUPart{Name: harness.SideLockdBackend, PerCycleUS: 100})},
		{Via: "SET NX PX", Lat: &harness.Percentiles{P50: 100}},
	}}}}
	md := Markdown(r)
	want := "redis — HTTP hop per request (p50, loopback): **175 µs, MISSED** (target ≤ 60 µs) (600 µs over HTTP − 250 µs in process) / 2 requests. Where the cost is: CPU per cycle 500 µs (lockd (HTTP)) against 100 µs (lockd (contract, no HTTP)); more CPU in lockd: HTTP server and API +300 µs"
	if !strings.Contains(md, want) {
		t.Errorf("the missed hop does not say where its cost is; want\n%s\nin\n%s", want, md)
	}
	if !strings.Contains(md, "## Where the time goes") {
		t.Errorf("no profiles section")
	}
}
