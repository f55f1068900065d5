package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lockd/lockd/backend"
)

// The leadership workload: beside the lock workload of every correctness
// cell, a few clients campaign for an election of their own on the same
// replicas, under the same fault, and use their leadership exactly as lock
// holders use a lock (the term is the fencing token; a leader stops at its
// own send-time deadline). Its checks: no two valid leaderships overlap,
// and every term is above the ones before it.
const (
	CheckFaultDoubleLeader = "elections: double leader"
	CheckFaultTermOrder    = "elections: term order"
)

// electionHTTPLocker drives an election over lockd's HTTP API as the
// workload drives a lock: Acquire campaigns (the value is the owner),
// Renew renews, Release resigns.
type electionHTTPLocker struct{ h *httpLocker }

func (e electionHTTPLocker) post(ctx context.Context, name, op string, body any) (*http.Response, error) {
	return e.h.postTo(ctx, "/v1/elections/"+url.PathEscape(name)+"/"+op, body, "")
}

func (e electionHTTPLocker) Acquire(ctx context.Context, name, owner string, ttl, wait time.Duration) (*Lease, error) {
	sent := time.Now()
	resp, err := e.post(ctx, name, "campaign", map[string]any{
		"ttl_ms": ttl.Milliseconds(), "wait_ms": wait.Milliseconds(), "owner": owner, "value": owner,
	})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, errorFrom(resp)
	}
	var l struct {
		LeaseID string `json:"lease_id"`
		Term    uint64 `json:"term"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&l); err != nil {
		return nil, fmt.Errorf("lockd: decode leadership: %w", err)
	}
	return &Lease{Key: name, ID: l.LeaseID, Token: l.Term, Sent: sent, TTL: ttl}, nil
}

func (e electionHTTPLocker) Renew(ctx context.Context, l *Lease, ttl time.Duration) error {
	return e.expect(ctx, l.Key, "renew", map[string]any{"lease_id": l.ID, "ttl_ms": ttl.Milliseconds()}, http.StatusOK)
}

func (e electionHTTPLocker) Release(ctx context.Context, l *Lease) error {
	return e.expect(ctx, l.Key, "resign", map[string]any{"lease_id": l.ID}, http.StatusNoContent)
}

func (e electionHTTPLocker) expect(ctx context.Context, name, op string, body any, status int) error {
	resp, err := e.post(ctx, name, op, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != status {
		return errorFrom(resp)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return nil
}

func (e electionHTTPLocker) Close() error { return e.h.Close() }

// contractElectionLocker drives backend.Elections in process (-no-http).
type contractElectionLocker struct{ el backend.Elections }

func (c contractElectionLocker) Acquire(ctx context.Context, name, owner string, ttl, wait time.Duration) (*Lease, error) {
	sent := time.Now()
	l, err := c.el.Campaign(ctx, backend.CampaignRequest{Name: name, Owner: owner, Value: owner, TTL: ttl, Wait: wait})
	if err != nil {
		return nil, err
	}
	return &Lease{Key: name, ID: l.LeaseID, Token: l.Term, Sent: sent, TTL: ttl}, nil
}

func (c contractElectionLocker) Renew(ctx context.Context, l *Lease, ttl time.Duration) error {
	_, err := c.el.Renew(ctx, l.Key, l.ID, ttl)
	return err
}

func (c contractElectionLocker) Release(ctx context.Context, l *Lease) error {
	return c.el.Resign(ctx, l.Key, l.ID)
}

func (c contractElectionLocker) Close() error { return nil }

// ElectionLocker returns a client that campaigns through this replica, or
// nil when its backend keeps no elections.
func (r *lockdReplica) ElectionLocker() Locker {
	el, ok := r.b.(backend.Elector)
	if !ok {
		return nil
	}
	if r.srv != nil {
		return electionHTTPLocker{newHTTPLocker(r.url)}
	}
	return &guardedLocker{r: r, Locker: contractElectionLocker{el: el.Elections()}}
}

// LeadershipResult is the leadership workload of a correctness cell.
type LeadershipResult struct {
	Clients   int   `json:"clients"`
	Campaigns int64 `json:"campaigns"`
	Terms     int64 `json:"terms"` // campaigns won
	// Overlaps: two leaderships, each within its holder's own deadline,
	// at once. ExpiredOverlaps: overlaps with an expired leader (what
	// fencing by term is for).
	Overlaps        int64  `json:"double_leaders"`
	ExpiredOverlaps int64  `json:"expired_overlaps"`
	FirstOverlap    string `json:"first_double_leader,omitempty"`
	TermRegressions int64  `json:"term_regressions"`
	StaleAccepted   int64  `json:"stale_writes_accepted_with_term_fencing"`
	FirstError      string `json:"first_error,omitempty"`
}

// leadershipRun is the leadership workload running beside a cell's lock
// workload.
type leadershipRun struct {
	done chan struct{}
	res  workloadResult
	n    int
	// none says why there is no leadership workload.
	none string
}

// startLeadership starts the leadership workload over the replicas that
// current returns (they may be replaced during the run), moving a client
// to the next live replica when its call fails.
func startLeadership(ctx context.Context, cfg CorrectnessConfig, current func() []*lockdReplica, off bool) *leadershipRun {
	rs := current()
	lr := &leadershipRun{done: make(chan struct{})}
	switch {
	case off:
		lr.none = "only the lock workload in this run"
	case len(rs) == 0 || rs[0].ElectionLocker() == nil:
		lr.none = "the backend keeps no elections"
	}
	if lr.none != "" {
		close(lr.done)
		return lr
	}
	lr.n = max(2, cfg.Clients/2)
	refs := make([]atomic.Pointer[lockerRef], lr.n)
	var mu sync.Mutex
	var made []Locker
	lockerOf := func(r *lockdReplica, i int) *lockerRef {
		l := r.ElectionLocker()
		mu.Lock()
		made = append(made, l)
		mu.Unlock()
		return &lockerRef{l: l, replica: i}
	}
	for c := range refs {
		refs[c].Store(lockerOf(rs[c%len(rs)], c%len(rs)))
	}
	move := func(c int, err error) {
		ref := refs[c].Load()
		rs := current()
		for k := 1; k < len(rs); k++ {
			j := (ref.replica + k) % len(rs)
			if !rs[j].dead() {
				refs[c].CompareAndSwap(ref, lockerOf(rs[j], j))
				return
			}
		}
	}
	holding := map[int]bool{}
	var holdingMu sync.Mutex
	// Leaders hold for a tenth of the TTL at least: a tight loop of
	// campaigns would add more load to the cell than it tells.
	w := &workload{Clients: lr.n, TTL: cfg.TTL, Wait: cfg.Wait, Hold: max(cfg.Hold, cfg.TTL/10), Duration: cfg.Duration, Seed: cfg.Seed + 1,
		giveUp: overrunSlack / 2, onError: move}
	w.locker = func(c int) Locker {
		return trackingLocker{Locker: refs[c].Load().l, c: c, holding: holding, mu: &holdingMu,
			retry: func() Locker { return refs[c].Load().l }, onError: move}
	}
	go func() {
		defer close(lr.done)
		lr.res = w.run(ctx, nil)
		mu.Lock()
		for _, l := range made {
			l.Close()
		}
		mu.Unlock()
	}()
	return lr
}

// finish waits for the end of the leadership workload and adds its checks to c.
func (lr *leadershipRun) finish(c *CorrectnessCell) {
	<-lr.done
	if lr.none != "" {
		c.addChecks(Check{Name: CheckFaultDoubleLeader, NotApplicable: lr.none}, Check{Name: CheckFaultTermOrder, NotApplicable: lr.none})
		return
	}
	r := lr.res
	c.Leadership = &LeadershipResult{Clients: lr.n, Campaigns: r.Attempts, Terms: r.Granted,
		Overlaps: r.Fenced.Overlaps, ExpiredOverlaps: r.Fenced.ExpiredOverlaps, FirstOverlap: r.Fenced.FirstOverlap,
		TermRegressions: r.TokenRegressions, StaleAccepted: r.Fenced.StaleAccepted, FirstError: r.FirstError}
	got := func(n int64) string { return fmt.Sprintf("%d (%d terms)", n, r.Granted) }
	c.addChecks(
		Check{Name: CheckFaultDoubleLeader, Threshold: "0 overlaps of two valid leaderships", Got: got(r.Fenced.Overlaps),
			Applies: true, Pass: r.Fenced.Overlaps == 0},
		Check{Name: CheckFaultTermOrder, Threshold: "0 terms not above an earlier one", Got: got(r.TokenRegressions),
			Applies: true, Pass: r.TokenRegressions == 0},
	)
}

// addChecks appends checks to c's table and settles its verdict again.
func (c *CorrectnessCell) addChecks(chs ...Check) {
	c.Checks = append(c.Checks, chs...)
	c.Why = nil
	for _, ch := range c.Checks {
		if ch.Applies && !ch.Pass {
			c.Why = append(c.Why, fmt.Sprintf("%s: %s (threshold %s)", ch.Name, ch.Got, ch.Threshold))
		}
	}
	c.Pass = len(c.Why) == 0
}

// current is the soak's replicas now (a killed one is replaced).
func (e *soakEnv) current() []*lockdReplica {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(*e.replicas)
}
