package harness

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lockd/lockd/backend"
)

// The mutation tests: each wraps the real etcd backend (embedded, in this
// process) in a deliberately broken one, runs a correctness scenario
// through lockd's HTTP API exactly as compare does, and asserts that the
// matching checks turn red. A check that no mutation turns red would not
// count, so every check is in some mutation's want list.
//
// Some faults break more than one promise (a double grant also jumps the
// queue); those checks are listed as allowed. Every other check must stay
// green, and the unbroken backend must be green everywhere.

// mutationConfig is the full run's correctness size (TTL 1 s, wait 2 s)
// in shorter cells: with the quick run's 300 ms TTL, an unbroken backend
// under -race on a loaded 2-core machine timed out a waiter now and then,
// and one timeout in a few dozen acquires is already 5 %.
func mutationConfig() CorrectnessConfig {
	return CorrectnessConfig{Clients: 4, TTL: time.Second, Wait: 2 * time.Second, Hold: time.Millisecond,
		Duration: 4 * time.Second, Seed: 7, CheckFor: 10 * time.Second}
}

func TestEveryCheckIsShownToFail(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the correctness workload over embedded etcd; skipped with -short")
	}
	d := etcdDeployment(t)
	cases := []struct {
		name     string
		scenario string
		cfg      func(*CorrectnessConfig)
		wrap     func(backend.Backend) backend.Backend
		want     []string // must be red
		allowed  []string // may be red too, as a consequence
	}{
		{name: "unbroken", scenario: "nofault"},
		{name: "unbroken pause", scenario: "pause"},
		{
			name: "grants twice", scenario: "nofault",
			// Critical sections long enough that the two holders' writes
			// come in both orders, many times.
			cfg:  func(c *CorrectnessConfig) { c.Hold = 20 * time.Millisecond },
			wrap: func(b backend.Backend) backend.Backend { return newDoubleGrant(b) },
			want: []string{CheckMutualExclusion, CheckLinearizable, CheckLostIncrements},
			// The twin's token comes from the same store's counter but may
			// return before a grant with a smaller one; and it jumps the
			// queue. A stale write counts only once a later holder has
			// written and the fence still let it through, which needs the
			// twin's token to be the lower one: often, but under -race on a
			// loaded machine (9 to 24 grants a run) not in every three runs.
			// "reuses a dead holder's token" is the mutation that must turn
			// that check red.
			allowed: []string{CheckTokenOrder, CheckFIFO, CheckStaleFenced},
		},
		{
			// The leadership workload beside the lock workload: a second
			// leader elected while one is out, its term from the store.
			name: "elects twice", scenario: "nofault",
			cfg: func(c *CorrectnessConfig) { c.Hold = 20 * time.Millisecond },
			wrap: func(b backend.Backend) backend.Backend {
				return breakElections(b, func(x backend.Backend) backend.Backend { return newDoubleGrant(x) })
			},
			want:    []string{CheckFaultDoubleLeader},
			allowed: []string{CheckFaultTermOrder},
		},
		{
			name: "hands out a lower term", scenario: "nofault",
			wrap: func(b backend.Backend) backend.Backend {
				return breakElections(b, func(x backend.Backend) backend.Backend {
					return &lowerToken{Backend: x, lowered: map[string]bool{}}
				})
			},
			want: []string{CheckFaultTermOrder},
		},
		{
			name: "hands out a lower token", scenario: "nofault",
			wrap: func(b backend.Backend) backend.Backend { return &lowerToken{Backend: b, lowered: map[string]bool{}} },
			want: []string{CheckTokenOrder},
			// The model refuses the grant too, unless it can order it before
			// the grants it overlaps in time.
			allowed: []string{CheckLinearizable},
		},
		{
			// A holder stalls past its TTL; its successor gets the same
			// token, writes first, and the stalled holder's late write
			// then passes a fence that refuses only lower tokens.
			name: "reuses a dead holder's token", scenario: "pause",
			// Twice the usual length: under -race on a loaded machine a
			// 4 s cell had as few as 9 grants, and two honest refusals
			// behind the stalled holder turned availability red.
			cfg:  func(c *CorrectnessConfig) { c.Duration = 8 * time.Second },
			wrap: func(b backend.Backend) backend.Backend { return newReusesToken(b) },
			want: []string{CheckStaleFenced},
			// The reused token is not above the earlier grant's; the late
			// write overwrites the successor's increment.
			allowed: []string{CheckTokenOrder, CheckLinearizable, CheckLostIncrements},
		},
		{
			// The semaphore and read-write lock workloads beside the lock
			// workload (prim_mutation_test.go). The lock workload runs
			// with 2 clients in these cases, its checks still all green:
			// on a machine at load 20 its 4 clients' waits timed out or
			// crossed now and then, turning availability or FIFO red in
			// cells whose point is the primitives.
			name: "grants a permit beyond N", scenario: "nofault",
			// N+1 permits held at once needs every client holding: twice
			// the usual length, for a loaded machine's slow acquires.
			cfg:  func(c *CorrectnessConfig) { c.Duration = 8 * time.Second; c.Clients = 2 },
			wrap: func(b backend.Backend) backend.Backend { return breakPrims(b, newGrantsPermitTwice, nil) },
			want: []string{CheckSemOverN},
			// The twin's slot is a live one's too.
			allowed: []string{CheckSemSlotOrder},
		},
		{
			name: "hands out a lower permit token", scenario: "nofault",
			cfg: func(c *CorrectnessConfig) { c.Clients = 2 },
			wrap: func(b backend.Backend) backend.Backend {
				return breakPrims(b, func(s backend.Semaphores) backend.Semaphores { return &lowerPermitToken{Semaphores: s} }, nil)
			},
			want: []string{CheckSemSlotOrder},
		},
		{
			name: "reuses a live permit's slot", scenario: "nofault",
			cfg:  func(c *CorrectnessConfig) { c.Clients = 2 },
			wrap: func(b backend.Backend) backend.Backend { return breakPrims(b, newReusesSlot, nil) },
			want: []string{CheckSemSlotOrder},
		},
		{
			name: "shares the write lock", scenario: "nofault",
			cfg: func(c *CorrectnessConfig) { c.Clients = 2 },
			wrap: func(b backend.Backend) backend.Backend {
				return breakPrims(b, nil, func(rw backend.RWLocks) backend.RWLocks { return sharesWrites{rw} })
			},
			want: []string{CheckRWWriterOverlap},
		},
		{
			name: "ignores FIFO", scenario: "nofault",
			wrap: func(b backend.Backend) backend.Backend { return &ignoresFIFO{Backend: b} },
			want: []string{CheckFIFO},
		},
		{
			name: "stalls past the wait", scenario: "nofault",
			wrap: func(b backend.Backend) backend.Backend { return &stallsPastWait{Backend: b} },
			want: []string{CheckOverrun},
			// A waiter left unanswered while later ones are served was
			// passed over.
			allowed: []string{CheckFIFO},
		},
		{
			name: "never frees a dead holder's lock", scenario: "pause",
			// Long enough after the first stall (at a quarter) for the
			// stuck lock to outlast TTL + skew + 1 s; longer critical
			// sections and shorter waits so that the refused waits weigh in
			// availability.
			cfg: func(c *CorrectnessConfig) {
				c.Duration = 8 * time.Second
				c.Hold = 50 * time.Millisecond
				c.Wait = time.Second
			},
			wrap: func(b backend.Backend) backend.Backend { return newNeverFrees(b) },
			want: []string{CheckTimeToFree, CheckAvailability, CheckOutage},
		},
	}
	covered := map[string]bool{}
	for _, tc := range cases {
		for _, w := range tc.want {
			covered[w] = true
		}
	}
	for _, name := range CheckNames {
		if !covered[name] {
			t.Errorf("check %q has no mutation that turns it red", name)
		}
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := mutationConfig()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			md := *d
			if tc.wrap != nil {
				md.newBackend = func(addrs []string, rt *rtCounter) (backend.Backend, error) {
					b, err := d.newBackend(addrs, rt)
					if err != nil {
						return nil, err
					}
					return tc.wrap(b), nil
				}
			}
			sc, ok := scenarioByName(tc.scenario)
			if !ok {
				t.Fatalf("no scenario %q", tc.scenario)
			}
			// A broken backend gets up to three runs to show each wanted
			// check red: whether a double grant's two holders interleave
			// their read-modify-writes depends on scheduling, and on a
			// loaded machine one short run may not provoke it. Every run
			// must keep the other checks green.
			attempts := 1
			if tc.wrap != nil {
				attempts = 3
			}
			seen := map[string]bool{}
			for attempt := 1; attempt <= attempts; attempt++ {
				cell := runCorrectness(t.Context(), sc, &md, cfg, nil)
				if cell.Unmeasured != "" {
					t.Fatalf("not measured: %s", cell.Unmeasured)
				}
				if tc.wrap == nil {
					// Green must not be vacuous: the primitives ran.
					for _, name := range []string{CheckSemOverN, CheckSemSlotOrder, CheckRWWriterOverlap} {
						if ch := cell.CheckOf(name); ch == nil || !ch.Applies {
							t.Errorf("%s does not apply on the unbroken backend: %+v", name, ch)
						}
					}
				}
				red := cell.Failed()
				for _, r := range red {
					seen[r] = true
					if !slices.Contains(tc.want, r) && !slices.Contains(tc.allowed, r) {
						t.Errorf("run %d: %s turned red; only %v should", attempt, r, tc.want)
					}
				}
				missing := 0
				for _, w := range tc.want {
					if !seen[w] {
						missing++
					}
				}
				if t.Failed() || testing.Verbose() || missing > 0 {
					t.Logf("run %d: %d grants; checks:\n%s", attempt, cell.Granted, describeChecks(cell))
				}
				if missing == 0 {
					break
				}
			}
			for _, w := range tc.want {
				if !seen[w] {
					t.Errorf("%s stayed green in %d runs; want red", w, attempts)
				}
			}
		})
	}
}

func describeChecks(c CorrectnessCell) string {
	var b strings.Builder
	for _, ch := range c.Checks {
		mark := "green"
		switch {
		case !ch.Applies:
			mark = "n/a  "
		case !ch.Pass:
			mark = "RED  "
		}
		b.WriteString("  " + mark + " " + ch.Name + ": " + ch.Got + " (threshold " + ch.Threshold + ")" + ch.NotApplicable + "\n")
	}
	return b.String()
}

// doubleGrant grants a key a second time while a grant of it is out: the
// acquire queues for a twin lock on a shadow key of the same store instead,
// so its token is a real one from the store's counter, and two holders are
// inside at once most of the time.
type doubleGrant struct {
	backend.Backend
	mu    sync.Mutex
	out   map[string]int  // key → grants handed out and not released
	asked map[string]int  // key → acquires of the real key not answered yet
	twins map[string]bool // lease id → granted on the shadow key
}

func newDoubleGrant(b backend.Backend) *doubleGrant {
	return &doubleGrant{Backend: b, out: map[string]int{}, asked: map[string]int{}, twins: map[string]bool{}}
}

func (m *doubleGrant) Acquire(ctx context.Context, req backend.AcquireRequest) (backend.Grant, error) {
	// Busy when the real key is held or already asked for: counting only
	// what is held missed every arrival that came just before a handoff
	// returned, and on a quiet machine that was all of them.
	m.mu.Lock()
	busy := m.out[req.Key] > 0 || m.asked[req.Key] > 0
	if !busy {
		m.asked[req.Key]++
	}
	m.mu.Unlock()
	if busy {
		twin := req
		twin.Key = req.Key + "-twin"
		if g, err := m.Backend.Acquire(ctx, twin); err == nil {
			m.mu.Lock()
			m.twins[g.LeaseID] = true
			m.out[req.Key]++
			m.mu.Unlock()
			g.Key = req.Key
			return g, nil
		}
	}
	g, err := m.Backend.Acquire(ctx, req)
	m.mu.Lock()
	if !busy {
		m.asked[req.Key]--
	}
	if err == nil {
		m.out[req.Key]++
	}
	m.mu.Unlock()
	return g, err
}

func (m *doubleGrant) storeKey(key, id string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.twins[id] {
		return key + "-twin"
	}
	return key
}

func (m *doubleGrant) Renew(ctx context.Context, key, id string, ttl time.Duration) (backend.Grant, error) {
	g, err := m.Backend.Renew(ctx, m.storeKey(key, id), id, ttl)
	g.Key = key
	return g, err
}

func (m *doubleGrant) Release(ctx context.Context, key, id string) error {
	err := m.Backend.Release(ctx, m.storeKey(key, id), id)
	m.mu.Lock()
	m.out[key]--
	delete(m.twins, id)
	m.mu.Unlock()
	return err
}

// lowerToken hands every fifth grant the first token it ever handed out.
type lowerToken struct {
	backend.Backend
	mu      sync.Mutex
	n       int
	first   uint64
	lowered map[string]bool
}

func (m *lowerToken) Acquire(ctx context.Context, req backend.AcquireRequest) (backend.Grant, error) {
	g, err := m.Backend.Acquire(ctx, req)
	if err != nil {
		return g, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.n++
	switch {
	case m.first == 0:
		m.first = g.Token
	case m.n%5 == 0:
		g.Token = m.first
		m.lowered[g.LeaseID] = true
	}
	return g, nil
}

func (m *lowerToken) Renew(ctx context.Context, key, id string, ttl time.Duration) (backend.Grant, error) {
	g, err := m.Backend.Renew(ctx, key, id, ttl)
	m.mu.Lock()
	if m.lowered[id] {
		g.Token = m.first
	}
	m.mu.Unlock()
	return g, err
}

// reusesToken hands the grants that follow one that was never released
// (its holder stalled and its lease ran out) that grant's token again, until
// its release comes.
type reusesToken struct {
	backend.Backend
	mu       sync.Mutex
	last     map[string]backend.Grant // key → the latest grant
	dead     map[string]backend.Grant // key → the unreleased grant whose token is reused
	released map[string]bool          // lease id → its release was sent
	reused   map[string]uint64        // lease id → the token handed out
}

func newReusesToken(b backend.Backend) *reusesToken {
	return &reusesToken{Backend: b, last: map[string]backend.Grant{}, dead: map[string]backend.Grant{},
		released: map[string]bool{}, reused: map[string]uint64{}}
}

func (m *reusesToken) Acquire(ctx context.Context, req backend.AcquireRequest) (backend.Grant, error) {
	g, err := m.Backend.Acquire(ctx, req)
	if err != nil {
		return g, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if d, ok := m.dead[req.Key]; ok && m.released[d.LeaseID] {
		delete(m.dead, req.Key)
	}
	if prev, ok := m.last[req.Key]; ok && !m.released[prev.LeaseID] {
		if _, ok := m.dead[req.Key]; !ok {
			m.dead[req.Key] = prev
		}
	}
	if d, ok := m.dead[req.Key]; ok {
		g.Token = d.Token
		m.reused[g.LeaseID] = g.Token
	}
	m.last[req.Key] = g
	return g, nil
}

func (m *reusesToken) Renew(ctx context.Context, key, id string, ttl time.Duration) (backend.Grant, error) {
	g, err := m.Backend.Renew(ctx, key, id, ttl)
	m.mu.Lock()
	if t, ok := m.reused[id]; ok {
		g.Token = t
	}
	m.mu.Unlock()
	return g, err
}

func (m *reusesToken) Release(ctx context.Context, key, id string) error {
	m.mu.Lock()
	m.released[id] = true
	m.mu.Unlock()
	return m.Backend.Release(ctx, key, id)
}

// ignoresFIFO holds every fourth waiting acquire back before it reaches the
// store, so that later arrivals queue ahead of it. The call still ends
// within its wait + the overrun slack.
type ignoresFIFO struct {
	backend.Backend
	n atomic.Int64
}

func (m *ignoresFIFO) Acquire(ctx context.Context, req backend.AcquireRequest) (backend.Grant, error) {
	if req.Wait > 0 && m.n.Add(1)%4 == 0 {
		sleepCtx(ctx, 700*time.Millisecond)
	}
	return m.Backend.Acquire(ctx, req)
}

// stallsPastWait sits on two acquires until well after their wait ran out
// before it queues them (so they are still granted, and availability is
// not what turns red).
type stallsPastWait struct {
	backend.Backend
	n atomic.Int64
}

func (m *stallsPastWait) Acquire(ctx context.Context, req backend.AcquireRequest) (backend.Grant, error) {
	if k := m.n.Add(1); k == 3 || k == 8 {
		sleepCtx(ctx, req.Wait+overrunSlack+500*time.Millisecond)
	}
	return m.Backend.Acquire(ctx, req)
}

// neverFrees never frees the lock of a holder that died: when the store
// grants a key whose previous grant was never released (its lease ran out),
// that grant is handed back and every acquire of the key from then on waits
// out its wait and is refused.
type neverFrees struct {
	backend.Backend
	mu       sync.Mutex
	last     map[string]backend.Grant // key → the latest grant
	released map[string]bool          // lease id → its release was sent
	stuck    map[string]bool
}

func newNeverFrees(b backend.Backend) *neverFrees {
	return &neverFrees{Backend: b, last: map[string]backend.Grant{}, released: map[string]bool{}, stuck: map[string]bool{}}
}

func (m *neverFrees) Acquire(ctx context.Context, req backend.AcquireRequest) (backend.Grant, error) {
	start := time.Now()
	m.mu.Lock()
	stuck := m.stuck[req.Key]
	m.mu.Unlock()
	if !stuck {
		g, err := m.Backend.Acquire(ctx, req)
		if err != nil {
			return g, err
		}
		m.mu.Lock()
		prev, seen := m.last[req.Key]
		if !seen || m.released[prev.LeaseID] {
			m.last[req.Key] = g
			m.mu.Unlock()
			return g, nil
		}
		// The previous holder never released: it died. Keep its lock.
		m.stuck[req.Key] = true
		m.mu.Unlock()
		_ = m.Backend.Release(context.WithoutCancel(ctx), req.Key, g.LeaseID)
	}
	sleepCtx(ctx, time.Until(start.Add(req.Wait)))
	return backend.Grant{}, &backend.HeldError{Key: req.Key}
}

func (m *neverFrees) Release(ctx context.Context, key, id string) error {
	// Noted before the store frees the key: the next grant may return
	// before the store's answer to this release does.
	m.mu.Lock()
	m.released[id] = true
	m.mu.Unlock()
	return m.Backend.Release(ctx, key, id)
}
