package harness

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lockd/lockd/backend"
)

// Scenario is a row of the report.
type Scenario struct {
	Name  string
	Title string
	Perf  bool
	// Section: the scenario has its own section in the report instead of
	// a cell in the correctness table.
	Section bool
	// About says what the scenario does, for the report.
	About string
}

var allScenarios = []Scenario{
	{Name: "latency", Perf: true, Title: "Uncontended latency", About: "one client, single-try acquire + release on its own key, back to back"},
	{Name: "handoff", Perf: true, Title: "Contended handoff", About: "N waiters on one key; release by one client → grant to the next, different client"},
	{Name: "throughput", Perf: true, Title: "Throughput", About: "closed loop: clients acquire (waiting) → release on keys drawn at random"},
	{Name: "roundtrips", Perf: true, Title: "Store round trips", About: "requests each client sends to the store per uncontended acquire and per release, counted inside the real client; the floor is one linearizable write per acquire"},
	{Name: "semaphores", Perf: true, Title: "Semaphores", About: "one semaphore of N permits (N = 1, 4, 16; 1 and 4 with -quick), 2N clients in a closed loop acquire (waiting) → release; and permit handoff: a semaphore of 4, every permit held and 2 clients in line, one permit released → the head of the line granted"},
	{Name: "rwlocks", Perf: true, Title: "Read-write locks", About: "a reader flood on one read-write lock: readers (4 and 16; 4 with -quick) in a closed loop each holding its read lock 10 ms, and one writer arriving again and again (holding 1 ms, pausing 20 ms): the writer's wait from send to grant (the starvation number) and the readers' grants per second"},
	{Name: "nofault", Title: "No fault", About: "the correctness workload with no fault: the control row"},
	{Name: "pause", Title: "Holder pause > TTL", About: "a holder stalls for 2×TTL after its grant (a GC pause), then writes"},
	{Name: "member-kill", Title: "Store member SIGKILL + restart", About: "one store member (the leader where there is one) is killed with SIGKILL and restarted on the same port and data directory (Redis runs without persistence, so it comes back empty)"},
	{Name: "partition", Title: "lockd ↔ store partition", About: "toxiproxy between lockd and every store member: latency spikes (100±50 ms), then a cut (timeout toxic 0) longer than the TTL, then healed"},
	{Name: "replica-kill", Title: "lockd replica killed", About: "two lockd replicas over one store, clients split between them; one replica is killed while clients hold and wait; its clients move to the other"},
	{Name: "clock-skew", Title: "Clock skew between lockd replicas", About: "two lockd replicas over one store, clients split between them, one replica's clock shifted (lease.Clock): inside the declared bound the cell must stay safe and the replica ready; beyond it the replica must report not-ready (/readyz 503 clock_skew), and the same run with it still serving counts what the bound prevents"},
	{Name: "lost-replies", Section: true, Title: "Lost replies", About: "toxiproxy between the client and lockd swallows the replies of some acquires (a timeout toxic on the downstream only: lockd grants, the answer never arrives); the client gives up and retries once, with the same Idempotency-Key (every lost grant must come back: 0 orphaned) and without one (the keys its lost grants block, and for how long)"},
	{Name: "waiter-vanish", Title: "Waiter vanishes mid-wait", About: "a third of the waits are abandoned mid-wait (the client's connection goes away)"},
	{Name: "history", Perf: true, Title: "Long history", About: "acquire + release on one key, 50,000 times (1,000 with -quick; a 150 s budget may stop the untimed middle sooner), through lockd's backend in process: p50 of the first 500 cycles against the last 500, each of the last alternated with a cycle on a fresh key, and the store's size before and after"},
	{Name: "election", Section: true, Title: "Election failover", About: "a leader in a process of its own (this executable re-run as a candidate) campaigns with a 2 s TTL and renews; a second candidate process waits in line; the leader is SIGKILLed (no resign). From the kill: when an observer sees no_leader, when the next candidate's campaign returns, when the observer sees the new term; over lockd's HTTP API on every backend that implements elections, and with etcd's own concurrency.Election (Campaign/Observe, its leader SIGKILLed too) on etcd. Double leader: the next leader elected while the killed one still ran; term order: the next term above the killed one's"},
	{Name: "soak", Title: "Mixed-fault soak", About: "three lockd replicas over a fault-sized store, clients spread over them and moving to another replica when theirs fails or does not answer within wait + 0.5 s; random faults drawn from a seeded generator, one at a time, each longer than the TTL: a lockd replica killed (and a fresh one started in its place), a lockd replica paused (its requests and replies held, as under SIGSTOP), a store member SIGKILLed and restarted, a store member SIGSTOPped and continued, the lockd ↔ store network cut, latency spikes; the full check table at the end (the outage limit counts the longest single fault, or the time within the outage when the store itself did not answer a direct ping, whichever is longer)"},
	{Name: "scale", Perf: true, Title: "Scale (memory)", About: "lockd and store memory with many held leases after a full renewal sweep, and with many clients long-polling one held key"},
}

func scenarioByName(name string) (Scenario, bool) {
	for _, s := range allScenarios {
		if s.Name == name {
			return s, true
		}
	}
	return Scenario{}, false
}

// CorrectnessConfig sizes the correctness runs.
type CorrectnessConfig struct {
	Clients  int
	TTL      time.Duration
	Wait     time.Duration
	Hold     time.Duration
	Duration time.Duration
	Seed     uint64
	CheckFor time.Duration // porcupine's time limit
	// MaxClockSkew is the skew the deployment declares between its
	// machines' clocks; a dead holder's lock must be free within TTL + it
	// + 1 s. Zero means DefaultMaxClockSkew.
	MaxClockSkew time.Duration
}

func (c CorrectnessConfig) skew() time.Duration {
	if c.MaxClockSkew > 0 {
		return c.MaxClockSkew
	}
	return DefaultMaxClockSkew
}

// timeline records when the scenario did what, for the report.
type timeline struct {
	start time.Time
	mu    sync.Mutex
	evs   []string
}

func (t *timeline) add(format string, args ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.evs = append(t.evs, fmt.Sprintf("%6.2fs ", time.Since(t.start).Seconds())+fmt.Sprintf(format, args...))
}

// at runs f at offset into the run unless ctx ends first.
func at(ctx context.Context, wg *sync.WaitGroup, offset time.Duration, f func()) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTimer(offset)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
			f()
		}
	}()
}

// runCorrectness runs one correctness scenario against d.
func runCorrectness(ctx context.Context, sc Scenario, d *deployment, cfg CorrectnessConfig, progress func(float64)) CorrectnessCell {
	return runCorrectnessWith(ctx, sc, d, cfg, progress, replicaPlan{})
}

// replicaPlan overrides how runCorrectnessWith builds its lockd replicas.
type replicaPlan struct {
	// n is how many replicas to run (at least the scenario's own).
	n int
	// backend, when set, connects replica i to the store instead of
	// d.newBackend.
	backend func(i int, addrs []string) (backend.Backend, error)
	// noLeadership leaves out the leadership workload.
	noLeadership bool
}

func runCorrectnessWith(ctx context.Context, sc Scenario, d *deployment, cfg CorrectnessConfig, progress func(float64), plan replicaPlan) CorrectnessCell {
	cell := CorrectnessCell{Scenario: sc.Name, Clients: cfg.Clients, TTLms: ms64(cfg.TTL), WaitMs: ms64(cfg.Wait), DurationS: cfg.Duration.Seconds()}
	addrs := d.Addrs
	var px *proxies
	if sc.Name == "partition" || sc.Name == "soak" {
		var err error
		if px, err = newProxies(d.Addrs); err != nil {
			cell.Unmeasured = "toxiproxy: " + err.Error()
			return cell
		}
		defer px.close()
		addrs = px.addrs()
	}
	nReplicas := 1
	if sc.Name == "replica-kill" {
		nReplicas = 2
	}
	if sc.Name == "soak" {
		nReplicas = 3
	}
	var replicas []*lockdReplica
	defer func() {
		for _, r := range replicas {
			r.stop()
		}
	}()
	nReplicas = max(nReplicas, plan.n)
	for i := 0; i < nReplicas; i++ {
		var b backend.Backend
		var err error
		if plan.backend != nil {
			b, err = plan.backend(i, addrs)
		} else {
			b, err = d.newBackend(addrs, nil)
		}
		if err != nil {
			cell.Unmeasured = "connect lockd to the store: " + err.Error()
			return cell
		}
		r, err := startLockd(b)
		if err != nil {
			b.Close()
			cell.Unmeasured = "start lockd: " + err.Error()
			return cell
		}
		replicas = append(replicas, r)
	}
	// Each client has its own lock client on its replica.
	lockers := make([]atomic.Pointer[lockerRef], cfg.Clients)
	for c := range lockers {
		r := replicas[c%len(replicas)]
		lockers[c].Store(&lockerRef{l: r.Locker(), replica: c % len(replicas)})
	}
	defer func() {
		for c := range lockers {
			lockers[c].Load().l.Close()
		}
	}()
	// holding tracks who is between grant and release, so a kill knows whose
	// holder died.
	var holdingMu sync.Mutex
	holding := map[int]bool{}

	w := &workload{Clients: cfg.Clients, TTL: cfg.TTL, Wait: cfg.Wait, Hold: cfg.Hold, Duration: cfg.Duration, Seed: cfg.Seed}
	w.locker = func(c int) Locker { return lockers[c].Load().l }
	var deaths []death
	var deathsMu sync.Mutex
	// window is how long the fault kept the store out of reach, as it
	// happened: kill to serving again, cut to healed.
	var window struct {
		sync.Mutex
		from, to time.Time
	}
	windowFrom := func() { window.Lock(); window.from = time.Now(); window.Unlock() }
	windowTo := func() { window.Lock(); window.to = time.Now(); window.Unlock() }
	tl := &timeline{}
	var soak *soakEnv
	var probe *storeProbe
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var faults sync.WaitGroup
	switch sc.Name {
	case "pause":
		// One stall at a quarter of the run and one at 60 %, each by the
		// first client granted after that instant.
		var stalls atomic.Int32
		started := time.Now()
		w.stall = func(c int, grantedAt time.Time) time.Duration {
			el := grantedAt.Sub(started)
			n := stalls.Load()
			if (n == 0 && el > cfg.Duration/4) || (n == 1 && el > cfg.Duration*6/10) {
				if stalls.CompareAndSwap(n, n+1) {
					tl.add("client %d stalls for %s holding its grant", c, 2*cfg.TTL)
					return 2 * cfg.TTL
				}
			}
			return 0
		}
	case "waiter-vanish":
		var mu sync.Mutex
		rng := rand.New(rand.NewPCG(cfg.Seed, 99))
		w.vanish = func(c int) (time.Duration, bool) {
			mu.Lock()
			defer mu.Unlock()
			if rng.IntN(3) != 0 {
				return 0, false
			}
			return time.Duration(rng.Int64N(int64(cfg.Wait/2))) + time.Millisecond, true
		}
	case "replica-kill":
		w.onError = func(c int, err error) {
			ref := lockers[c].Load()
			if ref.replica != 0 {
				if lockers[c].CompareAndSwap(ref, &lockerRef{l: replicas[0].Locker(), replica: 0}) {
					tl.add("client %d moves to replica 0 (%v)", c, short(err))
				}
			}
		}
		at(runCtx, &faults, cfg.Duration/3, func() {
			holdingMu.Lock()
			for c := range holding {
				if lockers[c].Load().replica == 1 {
					deathsMu.Lock()
					deaths = append(deaths, death{Client: c, At: time.Now()})
					deathsMu.Unlock()
				}
			}
			holdingMu.Unlock()
			replicas[1].kill()
			tl.add("replica 1 killed")
		})
	case "soak":
		env := &soakEnv{d: d, cfg: cfg, px: px, tl: tl, lockers: lockers, holding: holding, holdingMu: &holdingMu,
			replicas: &replicas, addrs: addrs}
		soak = env
		env.addDeath = func(dd death) { deathsMu.Lock(); deaths = append(deaths, dd); deathsMu.Unlock() }
		w.giveUp = overrunSlack / 2
		w.onError = env.moveClient
		faults.Add(1)
		go func() { defer faults.Done(); env.run(runCtx) }()
		if pb, err := d.newBackend(d.Addrs, nil); err != nil {
			tl.add("no direct probe of the store: %v", err)
		} else {
			defer pb.Close()
			probe = &storeProbe{b: pb, tl: tl}
			faults.Add(1)
			go func() { defer faults.Done(); probe.run(runCtx) }()
		}
	case "member-kill":
		victim := d.victim()
		faults.Add(1)
		go func() {
			// One goroutine, so that the restart never overtakes a slow kill.
			defer faults.Done()
			start := time.Now()
			sleepCtx(runCtx, cfg.Duration/3)
			if runCtx.Err() != nil {
				return
			}
			tl.add("killing member %d", victim)
			windowFrom()
			if err := d.kill(victim); err != nil {
				tl.add("kill member %d failed: %v", victim, err)
				return
			}
			tl.add("member %d is down", victim)
			sleepCtx(runCtx, time.Until(start.Add(cfg.Duration*2/3)))
			if err := d.restart(victim); err != nil {
				tl.add("restart member %d failed: %v", victim, err)
				return
			}
			windowTo()
			tl.add("member %d serving again", victim)
		}()
	case "partition":
		spike := cfg.Duration / 5
		cut := max(cfg.Duration/5, cfg.TTL*3/2)
		at(runCtx, &faults, spike, func() {
			if err := px.add("spike", "latency", `{"latency":100,"jitter":50}`); err != nil {
				tl.add("%v", err)
				return
			}
			tl.add("latency spike on (100±50 ms each way)")
		})
		at(runCtx, &faults, 2*spike, func() {
			px.remove("spike")
			tl.add("latency spike off")
			if err := px.add("cut", "timeout", `{"timeout":0}`); err != nil {
				tl.add("%v", err)
				return
			}
			windowFrom()
			tl.add("network cut (timeout toxic 0) for %s", cut)
		})
		at(runCtx, &faults, 2*spike+cut, func() {
			px.remove("cut")
			windowTo()
			tl.add("network healed")
		})
	}
	// Wrap the release path so that a client whose replica died releases
	// through the one it moved to (any replica may release any lease).
	inner := w.locker
	w.locker = func(c int) Locker {
		return trackingLocker{Locker: inner(c), c: c, holding: holding, mu: &holdingMu, retry: func() Locker { return inner(c) }, onError: w.onError}
	}
	current := func() []*lockdReplica { return replicas }
	if soak != nil {
		current = soak.current
	}
	lead := startLeadership(runCtx, cfg, current, plan.noLeadership)
	prims := startPrimitives(runCtx, cfg, current, plan.noLeadership)
	tl.start = time.Now()
	res := w.run(runCtx, progress)
	cancel()
	faults.Wait()
	res.Deaths = append(res.Deaths, deaths...)
	res.TimeToFree = timesToFree(res.History, res.Deaths)

	in := checkInputs{TTL: cfg.TTL, Wait: cfg.Wait, Skew: cfg.skew(), NoFIFO: d.noFIFO}
	window.Lock()
	if !window.from.IsZero() {
		to := window.to
		if to.IsZero() { // never healed or restarted: the window ran to the end
			to = res.Ended
		}
		in.FaultWindow = to.Sub(window.from)
	}
	window.Unlock()
	if soak != nil {
		in.FaultWindow = soak.longestWindow()
	}
	if probe != nil {
		in.StoreSilent = probe.silentWithin(res.LongestUnavailFrom, res.LongestUnavailFrom.Add(res.LongestUnavail))
	}
	in.Unfreed = unfreed(res.History, res.Deaths, res.Ended, in.freeLimit())
	cell.Events = tl.evs
	cell.fill(res, cfg, in)
	lead.finish(&cell)
	prims.finish(&cell)
	return cell
}

type lockerRef struct {
	l       Locker
	replica int
}

// trackingLocker records who holds, and retries a failed release once on the
// client's current locker (after onError may have moved it).
type trackingLocker struct {
	Locker
	c       int
	holding map[int]bool
	mu      *sync.Mutex
	retry   func() Locker
	onError func(int, error)
}

func (t trackingLocker) Acquire(ctx context.Context, key, owner string, ttl, wait time.Duration) (*Lease, error) {
	l, err := t.Locker.Acquire(ctx, key, owner, ttl, wait)
	if err == nil {
		t.mu.Lock()
		t.holding[t.c] = true
		t.mu.Unlock()
	}
	return l, err
}

func (t trackingLocker) Renew(ctx context.Context, l *Lease, ttl time.Duration) error {
	r, ok := t.Locker.(renewer)
	if !ok {
		return errors.New("this locker cannot renew")
	}
	return r.Renew(ctx, l, ttl)
}

func (t trackingLocker) Release(ctx context.Context, l *Lease) error {
	defer func() {
		t.mu.Lock()
		delete(t.holding, t.c)
		t.mu.Unlock()
	}()
	err := t.Locker.Release(ctx, l)
	if err != nil && !errors.Is(err, backend.ErrLeaseExpired) && t.onError != nil {
		t.onError(t.c, err)
		if next := t.retry(); next != t.Locker {
			return next.Release(ctx, l)
		}
	}
	return err
}

func short(err error) string {
	s := err.Error()
	if len(s) > 80 {
		s = s[:80] + "…"
	}
	return s
}

func ms64(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
