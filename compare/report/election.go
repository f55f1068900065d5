package report

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/lockd/lockd/compare/harness"
)

// electionSection: failover after a SIGKILLed leader, lockd beside etcd's
// own election, with the double-leader and term checks.
func electionSection(d *doc, ran []*harness.BackendRun) {
	var rows [][]tcell
	for _, br := range ran {
		e := br.Election
		if e == nil {
			continue
		}
		if e.Unmeasured != "" {
			rows = append(rows, []tcell{plain(br.Name), plain("lockd"), plain("not measured: " + e.Unmeasured), plain(""), plain(""), plain(""), plain("")})
		}
		for _, c := range e.Cells {
			if c.Unmeasured != "" {
				rows = append(rows, []tcell{plain(br.Name), plain(c.Via), plain("not measured: " + c.Unmeasured), plain(""), plain(""), plain(""), plain("")})
				continue
			}
			var no, el, ob []float64
			for _, r := range c.Rounds {
				if r.Error != "" {
					continue
				}
				no, el, ob = append(no, r.NoLeaderMs), append(el, r.ElectedMs), append(ob, r.ObservedMs)
			}
			noText := spread(no)
			if len(no) > 0 && no[0] < 0 {
				noText = "never (its observer reports leaders only)"
			}
			var failed []string
			for _, ch := range c.Checks {
				if !ch.Pass {
					failed = append(failed, fmt.Sprintf("%s: %s (threshold %s)", ch.Name, ch.Got, ch.Threshold))
				}
			}
			verdict := passCell(true, "double leader 0, terms rising")
			if !c.Pass {
				verdict = passCell(false, "RED: "+strings.Join(failed, "; "))
			}
			rows = append(rows, []tcell{plain(br.Name), plain(c.Via), plain(fmt.Sprint(len(c.Rounds))), plain(noText), plain(spread(el)), plain(spread(ob)), verdict})
		}
	}
	if len(rows) == 0 {
		return
	}
	d.h2("Election failover")
	d.p("Each round: a leader in a process of its own campaigns (TTL %s) and renews, a second candidate process waits in line, and the leader is SIGKILLed: no resign. Times are from the kill, median and worst over the rounds. The next leader cannot come before the killed one's lease runs out (TTL after its last renew); lockd's observer says no_leader when the lease ends, plus the declared clock skew when the store does not keep the clock. Double leader: the next leader elected while the killed one was still leader by its own reckoning (send of its last campaign or renew + TTL; etcd's election keeps no such deadline, so the kill ends it). A red cell names the check.", fmtMS(firstTTL(ran)))
	d.table([]string{"backend", "via", "rounds", "observer sees no leader", "next leader elected", "observer sees the next leader", "checks"}, rows)
}

// spread is "median (worst …)" of ms values.
func spread(ms []float64) string {
	if len(ms) == 0 {
		return "—"
	}
	s := append([]float64(nil), ms...)
	sort.Float64s(s)
	med, worst := s[len(s)/2], s[len(s)-1]
	if len(s) == 1 {
		return fmtMS(med)
	}
	return fmt.Sprintf("%s (worst %s)", fmtMS(med), fmtMS(worst))
}

func firstTTL(ran []*harness.BackendRun) float64 {
	for _, br := range ran {
		if br.Election != nil {
			for _, c := range br.Election.Cells {
				return c.TTLms
			}
		}
	}
	return 0
}

// runTimeSection: how long each step took beside its estimate, so a slow
// run shows which step grew.
func runTimeSection(d *doc, r *harness.Results, ran []*harness.BackendRun) {
	var rows [][]tcell
	for _, br := range ran {
		for _, s := range br.Steps {
			took := (time.Duration(s.Seconds * float64(time.Second))).Round(100 * time.Millisecond).String()
			if s.Concurrent {
				took += " (every backend's soak at the same time)"
			}
			rows = append(rows, []tcell{plain(br.Name), plain(s.Scenario), plain(took),
				plain((time.Duration(s.Estimate * float64(time.Second))).Round(time.Second).String())})
		}
	}
	if len(rows) == 0 {
		return
	}
	d.h2("Run time")
	d.p("The run took %s in all, on a machine shared with other work; each step below beside the estimate the run printed in its plan before it started.", r.Finished.Sub(r.Started).Round(time.Second))
	d.table([]string{"backend", "step", "took", "estimated"}, rows)
}
