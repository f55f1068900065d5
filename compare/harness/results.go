package harness

import (
	"strings"
	"time"
)

// Results is everything one run measured; results.json is this value.
type Results struct {
	Started   time.Time `json:"started"`
	Finished  time.Time `json:"finished"`
	Machine   Machine   `json:"machine"`
	GoVersion string    `json:"go_version"`
	Seed      uint64    `json:"seed"`
	Duration  string    `json:"duration_per_cell"`
	Quick     bool      `json:"quick"`
	Lockd     string    `json:"lockd_driven_as"`
	Scenarios []string  `json:"scenarios"`
	Scaled    []string  `json:"scaled_down,omitempty"`
	// MaxClockSkew is the clock skew the checks allowed (declared, not
	// injected).
	MaxClockSkew string        `json:"max_clock_skew"`
	Backends     []*BackendRun `json:"backends"`
}

// BackendRun is one column: everything measured on one backend.
type BackendRun struct {
	Name    string   `json:"name"`
	Server  string   `json:"server"`
	Version string   `json:"version,omitempty"`
	Skipped string   `json:"skipped,omitempty"`
	Install string   `json:"install,omitempty"`
	Notes   []string `json:"notes,omitempty"`
	// LockdMissing says why lockd itself could not run on this store in
	// this build (its backend is not in the tree); the direct libraries
	// still were measured.
	LockdMissing string            `json:"lockd_missing,omitempty"`
	Latency      []LatencyCell     `json:"latency,omitempty"`
	Handoff      []HandoffCell     `json:"handoff,omitempty"`
	Throughput   []ThroughputCell  `json:"throughput,omitempty"`
	RoundTrips   []RoundTripCell   `json:"round_trips,omitempty"`
	Scale        []ScaleCell       `json:"scale,omitempty"`
	Correctness  []CorrectnessCell `json:"correctness,omitempty"`
	// NotRun are the scenarios this column left out, and why.
	NotRun []NotRun `json:"not_run,omitempty"`
	// Skew is the clock-skew scenario's detail (its below-bound cell is
	// also in Correctness).
	Skew *SkewResult `json:"clock_skew,omitempty"`
	// LostReplies is the lost-replies scenario.
	LostReplies *LostReplyResult `json:"lost_replies,omitempty"`
	// History is the long-history scenario.
	History *HistoryResult `json:"history,omitempty"`
	// Election is the election-failover scenario.
	Election *ElectionResult `json:"election,omitempty"`
	// Semaphores and RWLocks are the semaphores and rwlocks scenarios.
	Semaphores *SemaphorePerf `json:"semaphores,omitempty"`
	RWLocks    *RWLockPerf    `json:"rwlocks,omitempty"`
	// Steps is how long each step took, beside its estimate.
	Steps []StepTime `json:"steps,omitempty"`

	// Waiters are the scale scenario's long-poll steps, lockd in its own
	// process (scalewaiters.go).
	Waiters []WaiterCell `json:"scale_waiters,omitempty"`
	// Sessions is the scale scenario's many-locks-in-few-sessions step
	// (scalesessions.go).
	Sessions *SessionCell `json:"scale_sessions,omitempty"`
}

// NotRun is a scenario a column did not run.
type NotRun struct {
	Scenario string `json:"scenario"`
	Why      string `json:"why"`
}

// LatencyCell: uncontended acquire+release through one way of locking.
type LatencyCell struct {
	Via string       `json:"via"`
	Lat *Percentiles `json:"latency,omitempty"`
	CDF [][2]float64 `json:"cdf,omitempty"`
	// CPU is where the row's time went (a CPU profile over the row).
	CPU        *CPUProfile `json:"cpu,omitempty"`
	Unmeasured string      `json:"unmeasured,omitempty"`
}

// HandoffCell: contended handoff with Waiters waiters on one key.
type HandoffCell struct {
	Via      string `json:"via"`
	Waiters  int    `json:"waiters"`
	Grants   int64  `json:"grants"`
	Handoffs int64  `json:"handoffs"`
	ReWins   int64  `json:"rewins"`
	// EarlyGrants: grants to another client that returned before the
	// previous holder sent its release: two holders at once.
	EarlyGrants    int64        `json:"grants_before_release"`
	Lat            *Percentiles `json:"handoff_latency,omitempty"`
	FIFOViolations int64        `json:"fifo_violations"`
	LongestWaitMs  float64      `json:"longest_wait_ms"`
	CDF            [][2]float64 `json:"cdf,omitempty"`
	Error          string       `json:"error,omitempty"`
	Unmeasured     string       `json:"unmeasured,omitempty"`

	// StoreOrder: grants out of the order the store queued their holders
	// in (lockd rows; storeorder.go).
	StoreOrder *StoreOrder `json:"store_order,omitempty"`
}

// ThroughputCell: closed-loop grants per second.
type ThroughputCell struct {
	Via     string  `json:"via"`
	Clients int     `json:"clients"`
	Keys    int     `json:"keys"`
	Grants  int64   `json:"grants"`
	Errors  int64   `json:"errors"`
	PerSec  float64 `json:"grants_per_s"`
	// CPUPer1000 is this process's CPU seconds per 1,000 grants: the load
	// generator and lockd (and, for etcd, the embedded server) together.
	CPUPer1000 float64 `json:"process_cpu_s_per_1000_grants"`
	Unmeasured string  `json:"unmeasured,omitempty"`

	StoreOrder *StoreOrder `json:"store_order,omitempty"`
}

// ModeResult is what the resource saw in one mode (fenced or unfenced).
type ModeResult struct {
	Writes        int64 `json:"writes_accepted"`
	StaleRejected int64 `json:"stale_writes_rejected"`
	StaleAccepted int64 `json:"stale_writes_accepted"`
	// Superseded: writes of a superseded holder that landed before its
	// successor's first write; no fence can refuse them, so they are not
	// stale writes.
	Superseded     int64       `json:"superseded_writes_before_successor"`
	LostIncrements int64       `json:"lost_increments"`
	Check          checkResult `json:"history_check"`
}

// CorrectnessCell: one backend × fault scenario.
type CorrectnessCell struct {
	Scenario  string  `json:"scenario"`
	Clients   int     `json:"clients"`
	TTLms     float64 `json:"ttl_ms"`
	WaitMs    float64 `json:"wait_ms"`
	DurationS float64 `json:"duration_s"`

	Attempts int64 `json:"acquires_attempted"`
	Granted  int64 `json:"acquires_granted"`
	TimedOut int64 `json:"acquires_timed_out"`
	Errors   int64 `json:"acquires_failed"`
	Vanished int64 `json:"waiters_vanished"`
	// Unconfirmed: grants after a long wait whose at-once renew failed;
	// Unused: grants whose deadline passed before they could be used. A
	// careful client uses neither.
	Unconfirmed int64 `json:"grants_unconfirmed"`
	Unused      int64 `json:"grants_unused_expired"`
	// Availability = granted / attempted (vanished waits not counted).
	Availability     float64 `json:"availability"`
	LongestUnavailMs float64 `json:"longest_unavailability_ms"`
	// LongestUnavailFromS is when that stretch began, in seconds from the
	// start of the workload (as the timeline's times).
	LongestUnavailFromS float64   `json:"longest_unavailability_from_s,omitempty"`
	TimeToFreeMs        []float64 `json:"time_to_free_ms,omitempty"`
	FirstError          string    `json:"first_error,omitempty"`
	// Overlaps: critical sections that overlapped while both holders'
	// leases were unexpired (mutual-exclusion violations).
	Overlaps        int64  `json:"mutual_exclusion_violations"`
	ExpiredOverlaps int64  `json:"overlaps_after_holder_expired"`
	FirstOverlap    string `json:"first_overlap,omitempty"`
	// FirstStale describes the first stale write the fenced register
	// accepted.
	FirstStale    string `json:"first_stale_accepted,omitempty"`
	StalledVanish int64  `json:"stalls_after_vanished_waiter"`
	// Overran: acquires that returned more than 1 s after their wait ran
	// out (the contract bounds an acquire by its wait).
	Overran int64 `json:"acquires_overran_wait"`
	// TokenRegressions: grants whose fencing token was not above every
	// token granted before them.
	TokenRegressions int64   `json:"token_regressions"`
	LongestCallMs    float64 `json:"longest_overrun_call_ms,omitempty"`

	Fenced   ModeResult `json:"fenced"`
	Unfenced ModeResult `json:"unfenced"`

	// FIFOViolations: grants that overtook a waiter that had asked more
	// than fifoCheckSlack earlier; FIFOWorstMs is the largest such lead.
	FIFOViolations int64   `json:"fifo_violations"`
	FIFOWorstMs    float64 `json:"fifo_worst_lead_ms,omitempty"`
	FirstFIFO      string  `json:"first_fifo_violation,omitempty"`

	// Leadership is the leadership workload that ran beside the lock
	// workload (nil when the backend keeps no elections).
	Leadership *LeadershipResult `json:"leadership,omitempty"`
	// Semaphore and RWLock are the primitive workloads that ran beside it
	// (nil when the backend does not keep it).
	Semaphore *SemaphoreWork `json:"semaphore,omitempty"`
	RWLock    *RWLockWork    `json:"rwlock,omitempty"`

	// Checks is the verdict: every named check with its threshold. Pass is
	// true only when every check that applies passed; Why lists the ones
	// that failed and by how much.
	Checks     []Check  `json:"checks"`
	Pass       bool     `json:"pass"`
	Why        []string `json:"why,omitempty"`
	Events     []string `json:"events,omitempty"`
	Unmeasured string   `json:"unmeasured,omitempty"`
}

func (c *CorrectnessCell) fill(r workloadResult, cfg CorrectnessConfig, in checkInputs) {
	c.Attempts, c.Granted, c.TimedOut, c.Errors, c.Vanished = r.Attempts, r.Granted, r.TimedOut, r.Errors, r.Vanished
	if r.Attempts > 0 {
		c.Availability = float64(r.Granted) / float64(r.Attempts)
	}
	c.LongestUnavailMs = ms64(r.LongestUnavail)
	c.LongestUnavailFromS = r.LongestUnavailFrom.Sub(r.Started).Seconds()
	for _, d := range r.TimeToFree {
		c.TimeToFreeMs = append(c.TimeToFreeMs, ms64(d))
	}
	c.Unconfirmed, c.Unused = r.Unconfirmed, r.Unused
	c.FirstError = r.FirstError
	c.Overlaps, c.ExpiredOverlaps, c.FirstOverlap = r.Fenced.Overlaps, r.Fenced.ExpiredOverlaps, r.Fenced.FirstOverlap
	c.FirstStale = r.Fenced.FirstStale
	c.StalledVanish = r.StalledHandoffs
	c.Overran, c.LongestCallMs = r.Overran, ms64(r.LongestCall)
	c.TokenRegressions = r.TokenRegressions
	c.FIFOViolations, c.FIFOWorstMs, c.FirstFIFO = r.FIFOViolations, ms64(r.FIFOWorst), r.FirstFIFO
	mode := func(s registerStats, fenced bool) ModeResult {
		return ModeResult{Writes: s.Accepted, StaleRejected: s.StaleRejected, StaleAccepted: s.StaleAccepted, Superseded: s.Superseded,
			LostIncrements: s.LostIncrements, Check: checkHistory(r.History, fenced, r.Started, cfg.CheckFor)}
	}
	c.Fenced, c.Unfenced = mode(r.Fenced, true), mode(r.Unfenced, false)

	evalChecks(c, in)
}

// LatencyOf is the uncontended latency measured via via, or nil.
func (br *BackendRun) LatencyOf(via string) *Percentiles {
	for _, c := range br.Latency {
		if c.Via == via && c.Lat != nil {
			return c.Lat
		}
	}
	return nil
}

// CPUOf is the CPU profile of the uncontended latency row via via, or nil.
func (br *BackendRun) CPUOf(via string) *CPUProfile {
	for _, c := range br.Latency {
		if c.Via == via && c.CPU != nil && c.CPU.Unmeasured == "" {
			return c.CPU
		}
	}
	return nil
}

// RoundTripsOf is the store round-trip count via via, or nil.
func (br *BackendRun) RoundTripsOf(via string) *RoundTripCell {
	for i, c := range br.RoundTrips {
		if c.Via == via && c.Unmeasured == "" {
			return &br.RoundTrips[i]
		}
	}
	return nil
}

// HandoffOf is the handoff latency measured via via with waiters waiters,
// or nil.
func (br *BackendRun) HandoffOf(via string, waiters int) *Percentiles {
	for _, c := range br.Handoff {
		if c.Via == via && c.Waiters == waiters && c.Lat != nil {
			return c.Lat
		}
	}
	return nil
}

// LockdVia is how lockd was driven in the run that produced br.
func (br *BackendRun) LockdVia() string {
	for _, c := range br.Latency {
		if strings.HasPrefix(c.Via, "lockd") {
			return c.Via
		}
	}
	for _, c := range br.Handoff {
		if strings.HasPrefix(c.Via, "lockd") {
			return c.Via
		}
	}
	return ViaLockd()
}

// CorrectnessOf is the correctness cell of scenario scen, or nil.
func (br *BackendRun) CorrectnessOf(scen string) *CorrectnessCell {
	for i := range br.Correctness {
		if br.Correctness[i].Scenario == scen {
			return &br.Correctness[i]
		}
	}
	return nil
}
