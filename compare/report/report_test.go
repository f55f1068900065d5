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
