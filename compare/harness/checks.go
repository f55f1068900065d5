package harness

import (
	"fmt"
	"sort"
	"time"
)

// The verdict of a correctness cell is this table of named checks, each with
// its threshold. A cell is green only when every check that applies is
// green. Each check is shown to fail by a mutation test (mutation_test.go):
// a real backend wrapped in a deliberately broken one turns it red.
const (
	CheckMutualExclusion = "mutual exclusion"
	CheckTokenOrder      = "token order"
	CheckLinearizable    = "fenced history linearizable"
	CheckStaleFenced     = "stale writes accepted with fencing"
	CheckLostIncrements  = "lost increments"
	CheckAvailability    = "availability"
	CheckOutage          = "longest outage"
	CheckOverrun         = "waits overrun"
	CheckFIFO            = "FIFO order"
	CheckTimeToFree      = "time to free after a holder dies"
)

// CheckNames are the checks in the order the report shows them.
var CheckNames = []string{CheckMutualExclusion, CheckTokenOrder, CheckLinearizable, CheckStaleFenced,
	CheckLostIncrements, CheckAvailability, CheckOutage, CheckOverrun, CheckFIFO, CheckTimeToFree,
	CheckFaultDoubleLeader, CheckFaultTermOrder, CheckSemOverN, CheckSemSlotOrder, CheckRWWriterOverlap}

// DefaultMaxClockSkew is the clock skew the checks allow between the
// machines of a deployment unless told otherwise (lockd's --max-clock-skew
// default).
const DefaultMaxClockSkew = time.Second

// fifoCheckSlack: a grant overtakes a waiter only when the waiter's acquire
// was sent more than this before the granted one's. Below it, the order in
// which the client sent two requests is no evidence of the order in which
// they reached the lock service: with a 10 ms slack, the unbroken etcd
// backend was seen passing over waiters by up to 155 ms on a loaded 2-core
// machine, and went red. A backend that passes over waiters by less than
// this is not caught.
const fifoCheckSlack = 250 * time.Millisecond

// maxFIFOShare: even beyond the slack, a request can be that late on a
// loaded machine (the unbroken backend once passed over a waiter by 281 ms
// while the quick run shared the CPUs), so the check allows this share of
// grants to overtake a waiter. A backend that ignores arrival order does so
// for far more (half the grants in the mutation test).
const maxFIFOShare = 0.05

// Check is one named check of a cell.
type Check struct {
	Name      string `json:"name"`
	Threshold string `json:"threshold"`
	Got       string `json:"got"`
	// Applies is false when the check means nothing for this cell (FIFO on
	// a backend that does not promise it; time to free when no holder
	// died); NotApplicable says why.
	Applies       bool   `json:"applies"`
	NotApplicable string `json:"not_applicable,omitempty"`
	Pass          bool   `json:"pass"`
}

// checkInputs are what the checks need beyond the cell's counts.
type checkInputs struct {
	TTL, Wait, Skew time.Duration
	// FaultWindow is how long the scenario's fault kept the store out of
	// reach (a member down, the network cut); outages may last that much
	// longer.
	FaultWindow time.Duration
	// StoreSilent is how long, within the longest outage, the store itself
	// did not answer a direct ping (the soak's storeProbe): a store that
	// lost its quorum is a fair outage while it lasts, so the outage may
	// last that much plus what a fault window gets, whichever is longer.
	StoreSilent time.Duration
	// NoFIFO is why the backend does not promise FIFO ("" when it does).
	NoFIFO string
	// Unfreed counts dead holders whose lock nobody got within the limit
	// before the run ended.
	Unfreed int64
}

func (in checkInputs) freeLimit() time.Duration { return in.TTL + in.Skew + time.Second }

// evalChecks fills c.Checks, c.Pass and c.Why from c's counts.
func evalChecks(c *CorrectnessCell, in checkInputs) {
	zero := func(name, what string, n int64) Check {
		return Check{Name: name, Threshold: "0 " + what, Got: fmt.Sprint(n), Applies: true, Pass: n == 0}
	}
	// One refusal is set aside: a cell of a loaded -race run can have as
	// few as 15 acquires, and one honest timeout behind a paused holder
	// would be 7 % of them.
	const minAvail = 0.95
	outageLimit := max(in.FaultWindow, in.StoreSilent) + in.freeLimit()
	outageWhy := fmt.Sprintf("TTL %s + skew %s + 1 s", in.TTL, in.Skew)
	switch {
	case in.StoreSilent > in.FaultWindow:
		outageWhy = fmt.Sprintf("the store itself silent %s in it + ", in.StoreSilent.Round(time.Millisecond)) + outageWhy
	case in.FaultWindow > 0:
		outageWhy = fmt.Sprintf("fault window %s + ", in.FaultWindow.Round(time.Millisecond)) + outageWhy
	}
	outageGot := fmtDur(c.LongestUnavailMs)
	if in.StoreSilent > 0 {
		outageGot += fmt.Sprintf(" (the store itself silent %s of it)", in.StoreSilent.Round(time.Millisecond))
	}
	checks := []Check{
		zero(CheckMutualExclusion, "overlaps of two valid leases", c.Overlaps),
		zero(CheckTokenOrder, "grants with a token not above an earlier one", c.TokenRegressions),
		{Name: CheckLinearizable, Threshold: "linearizable", Got: c.Fenced.Check.Result, Applies: true, Pass: c.Fenced.Check.Result == "linearizable"},
		// Stale: written after a later grant's holder had written. A write
		// of a superseded holder before its successor's first write is not
		// stale: the resource has seen no higher token, no fence can refuse
		// it (Fenced.Superseded counts those).
		zero(CheckStaleFenced, "writes accepted after a later holder had written", c.Fenced.StaleAccepted),
		zero(CheckLostIncrements, "increments lost with fencing", c.Fenced.LostIncrements),
		{Name: CheckAvailability, Threshold: fmt.Sprintf("≥ %.0f%% of acquires granted, one refusal aside", 100*minAvail),
			Got: fmt.Sprintf("%.1f%% (%d of %d)", 100*c.Availability, c.Granted, c.Attempts), Applies: true,
			Pass: c.Granted > 0 && float64(c.Granted) >= minAvail*float64(c.Attempts-1)},
		{Name: CheckOutage, Threshold: fmt.Sprintf("≤ %s (%s)", outageLimit.Round(time.Millisecond), outageWhy),
			Got: outageGot, Applies: true, Pass: msDur(c.LongestUnavailMs) <= outageLimit},
		{Name: CheckOverrun, Threshold: fmt.Sprintf("0 acquires returning > %s after their wait", overrunSlack),
			Got: fmt.Sprintf("%d", c.Overran), Applies: true, Pass: c.Overran == 0},
	}
	if c.Overran > 0 {
		checks[len(checks)-1].Got += fmt.Sprintf(" (longest call %s, wait %s)", fmtDur(c.LongestCallMs), in.Wait)
	}
	fifo := Check{Name: CheckFIFO, Threshold: fmt.Sprintf("≤ %.0f%% of grants overtaking a waiter that asked > %s earlier", 100*maxFIFOShare, fifoCheckSlack),
		Got: fmt.Sprintf("%d of %d grants", c.FIFOViolations, c.Granted), Applies: in.NoFIFO == "",
		Pass: float64(c.FIFOViolations) <= maxFIFOShare*float64(c.Granted)}
	if c.FIFOViolations > 0 {
		fifo.Got += fmt.Sprintf(" (worst by %s)", fmtDur(c.FIFOWorstMs))
	}
	if !fifo.Applies {
		fifo.NotApplicable = "not promised: " + in.NoFIFO
	}
	checks = append(checks, fifo)
	free := Check{Name: CheckTimeToFree, Threshold: fmt.Sprintf("≤ %s (TTL + skew %s + 1 s)", in.freeLimit(), in.Skew),
		Applies: len(c.TimeToFreeMs) > 0 || in.Unfreed > 0, Pass: in.Unfreed == 0}
	var worst float64
	for _, v := range c.TimeToFreeMs {
		worst = max(worst, v)
		if msDur(v) > in.freeLimit() {
			free.Pass = false
		}
	}
	switch {
	case !free.Applies:
		free.NotApplicable = "no holder died in this scenario"
	case in.Unfreed > 0:
		free.Got = fmt.Sprintf("%d of %d dead holders' locks never freed", in.Unfreed, int64(len(c.TimeToFreeMs))+in.Unfreed)
	default:
		free.Got = "worst " + fmtDur(worst)
	}
	checks = append(checks, free)

	c.Checks, c.Why = checks, nil
	for _, ch := range checks {
		if ch.Applies && !ch.Pass {
			c.Why = append(c.Why, fmt.Sprintf("%s: %s (threshold %s)", ch.Name, ch.Got, ch.Threshold))
		}
	}
	c.Pass = len(c.Why) == 0
}

// Failed names the checks of c that apply and failed.
func (c *CorrectnessCell) Failed() []string {
	var out []string
	for _, ch := range c.Checks {
		if ch.Applies && !ch.Pass {
			out = append(out, ch.Name)
		}
	}
	return out
}

// CheckOf is c's check called name, or nil.
func (c *CorrectnessCell) CheckOf(name string) *Check {
	for i := range c.Checks {
		if c.Checks[i].Name == name {
			return &c.Checks[i]
		}
	}
	return nil
}

func msDur(ms float64) time.Duration { return time.Duration(ms * float64(time.Millisecond)) }

func fmtDur(ms float64) string { return msDur(ms).Round(time.Millisecond).String() }

// fifoViolations counts grants that overtook a waiter: another client's
// acquire sent more than slack earlier, still waiting when this grant
// returned and still within its own wait, and answered in the end (granted
// or timed out: a waiter that vanished or failed asked nothing of the
// queue). worst is the largest lead of an overtaken waiter.
func fifoViolations(h []histOp, wait, slack time.Duration) (n int64, worst time.Duration, first string) {
	var acq []histOp
	for _, op := range h {
		if op.Kind == opAcquire {
			acq = append(acq, op)
		}
	}
	sort.Slice(acq, func(i, j int) bool { return acq[i].Call.Before(acq[j].Call) })
	for i, g := range acq {
		if !g.Granted {
			continue
		}
		var lead time.Duration
		var who int
		for j := i - 1; j >= 0; j-- {
			o := acq[j]
			if g.Call.Sub(o.Call) > wait+slack {
				break
			}
			if o.Client == g.Client || o.Unknown || o.Vanished || g.Call.Sub(o.Call) <= slack {
				continue
			}
			if o.Return.After(g.Return) && g.Return.Before(o.Call.Add(wait)) {
				if l := g.Call.Sub(o.Call); l > lead {
					lead, who = l, o.Client
				}
			}
		}
		if lead > 0 {
			n++
			worst = max(worst, lead)
			if first == "" {
				first = fmt.Sprintf("client %d was granted while client %d, which had asked %s earlier, still waited", g.Client, who, lead.Round(time.Millisecond))
			}
		}
	}
	return n, worst, first
}

// unfreed counts deaths after which no other client got the lock, although
// the run went on for longer than limit.
func unfreed(h []histOp, deaths []death, end time.Time, limit time.Duration) int64 {
	var n int64
	for _, d := range deaths {
		freed := false
		for _, op := range h {
			if op.Kind == opAcquire && op.Granted && op.Client != d.Client && op.Return.After(d.At) {
				freed = true
				break
			}
		}
		if !freed && end.Sub(d.At) > limit {
			n++
		}
	}
	return n
}
