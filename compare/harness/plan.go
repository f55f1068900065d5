package harness

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// The run's plan: every step (one scenario on one backend) with an estimate
// of its length, printed before the run starts, and a running ETA after
// each step. The estimates come from the sizes (cells × cell length) plus a
// fixed cost per step for starting servers and checking histories, taken
// from measured runs on the 2-core machine; they are a forecast, not a
// bound, and the report shows each step's real time beside its estimate.

// StepTime is how long one step of the run took.
type StepTime struct {
	Scenario string  `json:"scenario"`
	Seconds  float64 `json:"seconds"`
	Estimate float64 `json:"estimated_seconds"`
	// Concurrent: the step ran at the same time as the same step of the
	// other backends (the soaks).
	Concurrent bool `json:"concurrent,omitempty"`
}

// estimateStep forecasts one step of target t.
func estimateStep(t target, name string, cfg Config, sz Sizes) time.Duration {
	d := cfg.Duration
	vias := 2 + max(t.directs, 1) // lockd over HTTP, lockd in process, the direct libraries
	cell := sz.Correct.Duration
	switch name {
	case "latency":
		return time.Duration(vias)*d + 2*time.Second
	case "handoff":
		return time.Duration(vias*len(sz.HandoffWaiters))*d + 3*time.Second
	case "throughput":
		cellDur := max(d/4, 1500*time.Millisecond)
		if cfg.Quick {
			cellDur = max(d/2, 500*time.Millisecond)
		}
		return time.Duration(2*len(sz.TputClients)*len(sz.TputKeys))*(cellDur+300*time.Millisecond) + 2*time.Second
	case "roundtrips":
		return 5 * time.Second
	case "semaphores":
		permits, cell := semSizes(cfg)
		return time.Duration(len(permits))*(cell+300*time.Millisecond) + d + 2*time.Second
	case "rwlocks":
		return time.Duration(len(rwFloodSizes(cfg)))*d + 2*time.Second
	case "nofault", "pause", "partition", "replica-kill", "waiter-vanish":
		return cell + 3*time.Second
	case "member-kill":
		return cell + 10*time.Second
	case "clock-skew":
		// Below the bound, beyond it with the gate, beyond it without.
		return 3*cell + 10*time.Second
	case "lost-replies":
		rounds, ttl, giveUp := lostReplySizes(cfg.Quick)
		return time.Duration(2*rounds)*(giveUp+time.Second) + ttl + 5*time.Second
	case "history":
		n, budget := historySize(cfg.Quick)
		return min(time.Duration(n)*1500*time.Microsecond, budget) + 5*time.Second
	case "election":
		return electionEstimate(t, cfg.Quick)
	case "soak":
		return soakLength(cfg.Quick, cfg.SoakDuration) + 10*time.Second
	case "scale":
		// The leases step's budget and its renewal sweep, the sessions
		// step's, the two waiter steps' budgets.
		return sz.ScaleBudget*5/2 + sz.ScaleWaiterBudget*2 + 20*time.Second
	}
	return 10 * time.Second
}

// planner prints the plan and keeps the ETA.
type planner struct {
	w     io.Writer
	start time.Time
	// soaksTogether: the soaks run at the same time, so they count once.
	soaksTogether bool

	mu   sync.Mutex
	est  map[string]time.Duration // backend/scenario → estimate
	left map[string]time.Duration // the same, until done
}

type planStep struct {
	backend, scenario string
	est               time.Duration
}

// newPlanner prints the plan: the steps in order with their estimates, the
// soaks side by side at the end, and the estimated total.
func newPlanner(w io.Writer, steps []planStep, soaksTogether bool) *planner {
	p := &planner{w: w, start: time.Now(), est: map[string]time.Duration{}, left: map[string]time.Duration{}, soaksTogether: soaksTogether}
	var soak time.Duration
	var total time.Duration
	var b strings.Builder
	for _, s := range steps {
		p.left[s.backend+"/"+s.scenario] = s.est
		p.est[s.backend+"/"+s.scenario] = s.est
		if s.scenario == "soak" && soaksTogether {
			soak = max(soak, s.est)
			continue
		}
		total += s.est
		fmt.Fprintf(&b, "  %-10s %-14s ~%s\n", s.backend, s.scenario, s.est.Round(time.Second))
	}
	if soak > 0 {
		fmt.Fprintf(&b, "  %-10s %-14s ~%s (every backend's soak at the same time, after the other steps)\n", "all", "soak", soak.Round(time.Second))
		total += soak
	}
	fmt.Fprintf(w, "compare: plan, %d steps, estimated total %s:\n%s", len(steps), total.Round(time.Second), b.String())
	return p
}

// remaining is the estimate of what is left: sequential steps add up, the
// concurrent soaks count once.
func (p *planner) remainingLocked() time.Duration {
	var seq, soak time.Duration
	for k, v := range p.left {
		if strings.HasSuffix(k, "/soak") && p.soaksTogether {
			soak = max(soak, v)
		} else {
			seq += v
		}
	}
	return seq + soak
}

// done records that a step finished after took, and prints the ETA.
func (p *planner) done(backend, scenario string, took time.Duration) StepTime {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := backend + "/" + scenario
	est := p.est[k]
	delete(p.left, k)
	if scenario == "soak" && p.soaksTogether {
		// They ended together: none is left.
		for k := range p.left {
			if strings.HasSuffix(k, "/soak") {
				delete(p.left, k)
			}
		}
	}
	rem := p.remainingLocked()
	fmt.Fprintf(p.w, "    took %s (estimated %s); run elapsed %s, about %s to go\n",
		took.Round(100*time.Millisecond), est.Round(time.Second), time.Since(p.start).Round(time.Second), rem.Round(time.Second))
	return StepTime{Scenario: scenario, Seconds: took.Seconds(), Estimate: est.Seconds(), Concurrent: scenario == "soak" && p.soaksTogether}
}

// drop forgets a backend's steps (it was skipped or did not start).
func (p *planner) drop(backend string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k := range p.left {
		if strings.HasPrefix(k, backend+"/") {
			delete(p.left, k)
		}
	}
}
