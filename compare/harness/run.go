package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/lockd/lockd/internal/testserver"
)

// pendingSoak is a backend's soak, left for runSoaks.
type pendingSoak struct {
	t  target
	br *BackendRun
	// d is the closed perf deployment: only what it says of the build
	// (noBackend) is used.
	d *deployment
}

// runTarget measures one backend: every requested scenario, lockd and the
// direct libraries, on servers it starts and stops itself. When soaks is
// not nil, the soak is left there for runSoaks.
func runTarget(ctx context.Context, t target, cfg Config, sz Sizes, stderr io.Writer, p *planner, soaks *[]pendingSoak) *BackendRun {
	br := &BackendRun{Name: t.Name, Server: t.Server}
	if why := t.missing(); why != "" {
		br.Skipped, br.Install = why, t.Install
		if testserver.Required() && t.start != nil {
			br.Skipped += " (LOCKD_REQUIRE_SERVERS=1: this is a failure)"
		}
		fmt.Fprintf(stderr, "[%s] skipped: %s; install: %s\n", t.Name, why, t.Install)
		p.drop(t.Name)
		return br
	}
	fmt.Fprintf(stderr, "[%s] starting %s (%d member(s))\n", t.Name, t.Server, t.PerfMembers)
	d, err := t.start(t.PerfMembers)
	if err != nil {
		br.Skipped = "could not start the server: " + err.Error()
		br.Install = t.Install
		fmt.Fprintf(stderr, "[%s] %s\n", t.Name, br.Skipped)
		p.drop(t.Name)
		return br
	}
	defer d.close()
	br.Version, br.Notes = d.Version, append(br.Notes, d.notes...)

	br.LockdMissing = d.noBackend
	for _, name := range cfg.Scenarios {
		if ctx.Err() != nil {
			return br
		}
		if name == "soak" && soaks != nil {
			// Every backend's soak runs at the same time, after the other
			// steps (runSoaks).
			*soaks = append(*soaks, pendingSoak{t: t, br: br, d: d})
			continue
		}
		start := time.Now()
		runStep(ctx, t, name, cfg, sz, stderr, br, d)
		br.Steps = append(br.Steps, p.done(t.Name, name, time.Since(start)))
	}
	return br
}

// runStep runs scenario name on target t's deployment d into br.
func runStep(ctx context.Context, t target, name string, cfg Config, sz Sizes, stderr io.Writer, br *BackendRun, d *deployment) {
	sc, _ := scenarioByName(name)
	if why, ok := t.skipByDefault[name]; ok && !cfg.ScenariosNamed {
		b := newBar(stderr, fmt.Sprintf("[%s] %s", t.Name, sc.Name))
		br.NotRun = append(br.NotRun, NotRun{Scenario: name, Why: why})
		b.done("not run: " + why)
		return
	}
	if d.noBackend != "" && (!sc.Perf || sc.Name == "scale") {
		b := newBar(stderr, fmt.Sprintf("[%s] %s", t.Name, sc.Name))
		if sc.Name == "election" {
			br.Election = &ElectionResult{Unmeasured: d.noBackend}
		} else if sc.Name == "lost-replies" {
			br.LostReplies = &LostReplyResult{Unmeasured: d.noBackend}
		} else if sc.Name == "scale" {
			br.Scale = []ScaleCell{{What: "held leases, each renewed", Unmeasured: d.noBackend}}
			br.Waiters = []WaiterCell{{What: WaitersOneKey, Unmeasured: d.noBackend}, {What: WaitersSpread, Unmeasured: d.noBackend}}
		} else {
			br.Correctness = append(br.Correctness, CorrectnessCell{Scenario: sc.Name, Unmeasured: d.noBackend})
		}
		b.done("not measured: " + d.noBackend)
		return
	}
	b := newBar(stderr, fmt.Sprintf("[%s] %s", t.Name, sc.Name))
	switch sc.Name {
	case "latency":
		br.Latency = runLatency(ctx, t.Name, d, cfg, b)
		b.done("")
	case "handoff":
		br.Handoff = runHandoff(ctx, d, cfg, sz, b)
		b.done("")
	case "throughput":
		br.Throughput = runThroughput(ctx, d, cfg, sz, b)
		b.done("")
	case "scale":
		br.Scale, br.Waiters, br.Sessions = runScale(ctx, t.Name, cfg.Out, d, sz, b)
		b.done("")
	case "roundtrips":
		br.RoundTrips = runRoundTrips(ctx, d, sz, b)
		b.done("")
	case "semaphores":
		br.Semaphores = runSemaphores(ctx, t, d, cfg, b)
		b.done(semaphoreStatus(br.Semaphores))
	case "rwlocks":
		br.RWLocks = runRWLocks(ctx, t, d, cfg, b)
		b.done(rwStatus(br.RWLocks))
	case "clock-skew":
		res := runSkew(ctx, d, sz.Correct, b)
		br.Skew = res
		cell := res.Below
		cell.Scenario = sc.Name
		if res.Unmeasured != "" {
			cell = CorrectnessCell{Scenario: sc.Name, Unmeasured: res.Unmeasured}
		} else {
			// The readiness checks belong to the cell's verdict.
			cell.addChecks(res.Checks...)
		}
		br.Correctness = append(br.Correctness, cell)
		b.done(cellStatus(cell) + skewStatus(res))
	case "history":
		if d.noBackend != "" {
			br.History = &HistoryResult{Unmeasured: d.noBackend}
		} else {
			br.History = runHistory(ctx, d, cfg.Quick, b)
		}
		b.done(historyStatus(br.History))
	case "election":
		br.Election = runElection(ctx, d, isEtcd(t), cfg.Quick, sz.Correct.skew(), b.set)
		b.done(electionStatus(br.Election))
	case "lost-replies":
		br.LostReplies = runLostReplies(ctx, d, cfg.Quick, sz.Correct.skew(), b)
		b.done(lostReplyStatus(br.LostReplies))
	case "soak":
		fd, err := t.start(t.FaultMembers)
		if err != nil {
			br.Correctness = append(br.Correctness, CorrectnessCell{Scenario: sc.Name, Unmeasured: fmt.Sprintf("start %d-member store: %v", t.FaultMembers, err)})
			b.done("not measured: " + err.Error())
			return
		}
		sc2 := sz.Correct
		sc2.Duration = soakLength(cfg.Quick, cfg.SoakDuration)
		cell := runCorrectness(ctx, sc, fd, sc2, b.set)
		fd.close()
		br.Correctness = append(br.Correctness, cell)
		b.done(cellStatus(cell))
	case "member-kill":
		// A fresh deployment: the kill must not disturb the store the
		// other scenarios use, and it needs FaultMembers members.
		fd, err := t.start(t.FaultMembers)
		if err != nil {
			br.Correctness = append(br.Correctness, CorrectnessCell{Scenario: sc.Name, Unmeasured: fmt.Sprintf("start %d-member store: %v", t.FaultMembers, err)})
			b.done("not measured: " + err.Error())
			return
		}
		cell := runCorrectness(ctx, sc, fd, sz.Correct, b.set)
		fd.close()
		br.Correctness = append(br.Correctness, cell)
		b.done(cellStatus(cell))
	default:
		cell := runCorrectness(ctx, sc, d, sz.Correct, b.set)
		br.Correctness = append(br.Correctness, cell)
		b.done(cellStatus(cell))
	}
}

// runSoaks runs the soaks left by runTarget, all at the same time: each on
// its own store with its own faults, sharing only the machine. Five
// sequential 5-minute soaks alone would take 25 of the run's 30 minutes.
func runSoaks(ctx context.Context, soaks []pendingSoak, cfg Config, sz Sizes, stderr io.Writer, p *planner) {
	if len(soaks) == 0 {
		return
	}
	length := soakLength(cfg.Quick, cfg.SoakDuration)
	fmt.Fprintf(stderr, "[all] soak: %d backends at the same time, %s each\n", len(soaks), length)
	lw := &lockedWriter{w: stderr}
	// Every store is started first, one after another (three ZooKeeper
	// JVMs starting would otherwise stall the soaks already running).
	fds := make([]*deployment, len(soaks))
	for i, ps := range soaks {
		if _, skip := ps.t.skipByDefault["soak"]; (skip && !cfg.ScenariosNamed) || ps.d.noBackend != "" {
			continue
		}
		fd, err := ps.t.start(ps.t.FaultMembers)
		if err != nil {
			ps.br.Correctness = append(ps.br.Correctness, CorrectnessCell{Scenario: "soak", Unmeasured: fmt.Sprintf("start %d-member store: %v", ps.t.FaultMembers, err)})
			continue
		}
		fds[i] = fd
	}
	start := time.Now()
	done := make(chan struct{})
	go func() {
		tick := time.NewTicker(30 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				fmt.Fprintf(lw, "    soak: %s of %s\n", time.Since(start).Round(time.Second), length)
			}
		}
	}()
	var wg sync.WaitGroup
	steps := make([]time.Duration, len(soaks))
	for i, ps := range soaks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			from := time.Now()
			switch {
			case fds[i] != nil:
				sc, _ := scenarioByName("soak")
				b := newBar(lw, fmt.Sprintf("[%s] soak", ps.t.Name))
				sc2 := sz.Correct
				sc2.Duration = length
				cell := runCorrectness(ctx, sc, fds[i], sc2, nil)
				fds[i].close()
				ps.br.Correctness = append(ps.br.Correctness, cell)
				b.done(cellStatus(cell))
			case ps.br.CorrectnessOf("soak") == nil:
				// Not run or not measured: runStep says so.
				runStep(ctx, ps.t, "soak", cfg, sz, lw, ps.br, ps.d)
			}
			steps[i] = time.Since(from)
		}()
	}
	wg.Wait()
	close(done)
	for i, ps := range soaks {
		fmt.Fprintf(stderr, "[%s] soak", ps.t.Name)
		ps.br.Steps = append(ps.br.Steps, p.done(ps.t.Name, "soak", steps[i]))
	}
}

// lockedWriter serialises the lines of steps that run at the same time.
// It is not a terminal, so their progress bars print only final lines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func cellStatus(c CorrectnessCell) string {
	if c.Unmeasured != "" {
		return "not measured: " + c.Unmeasured
	}
	verdict := "PASS"
	if !c.Pass {
		verdict = "FAIL (" + strings.Join(c.Why, "; ") + ")"
	}
	return fmt.Sprintf("%s: %d grants, availability %.1f%%, ME violations %d, fenced stale rejected %d, unfenced stale accepted %d, unfenced lost %d, fenced check %s",
		verdict, c.Granted, 100*c.Availability, c.Overlaps, c.Fenced.StaleRejected, c.Unfenced.StaleAccepted, c.Unfenced.LostIncrements, c.Fenced.Check.Result)
}

// via is one way of locking on a deployment: lockd or a direct library.
type via struct {
	name      string
	newClient clientFactory
	close     func()
	// lockd: a lockd row; startOrder starts the store-order probe for it.
	lockd      bool
	startOrder func() (orderProbe, error)
}

// vias returns lockd (one replica over a fresh backend) and then every
// direct library, limited to maxDirect of them. With both, lockd comes
// twice: over HTTP and in process, each on its own backend, so that HTTP's
// cost and the store's are seen apart in one run (-no-http: in process
// only).
func vias(d *deployment, maxDirect int, both bool) ([]via, error) {
	var out []via
	ways := []bool{lockdHandler != nil}
	if both && lockdHandler != nil {
		ways = []bool{true, false}
	}
	for _, overHTTP := range ways {
		name := ViaContract
		if overHTTP {
			name = ViaHTTP
		}
		if d.noBackend != "" {
			out = append(out, via{name: name, newClient: func() (Locker, error) { return nil, errors.New(d.noBackend) }, close: func() {}})
			continue
		}
		b, err := d.newBackend(d.Addrs, nil)
		if err != nil {
			closeVias(out)
			return nil, fmt.Errorf("connect lockd to the store: %w", err)
		}
		r, err := startLockdAs(b, overHTTP)
		if err != nil {
			b.Close()
			closeVias(out)
			return nil, err
		}
		out = append(out, via{name: name, newClient: func() (Locker, error) { return r.Locker(), nil }, close: r.stop,
			lockd: true, startOrder: func() (orderProbe, error) { return startOrder(d) }})
	}
	for i, dl := range d.directs {
		if i >= maxDirect {
			break
		}
		out = append(out, via{name: dl.Name, newClient: func() (Locker, error) { return dl.New(d.Addrs, nil) }, close: func() {}})
	}
	return out, nil
}

// order starts the via's store-order probe (none for a direct library).
func (v via) order() (orderProbe, error) {
	if v.startOrder == nil {
		return nil, nil
	}
	return v.startOrder()
}

func closeVias(vs []via) {
	for _, v := range vs {
		v.close()
	}
}

func runLatency(ctx context.Context, name string, d *deployment, cfg Config, b *bar) []LatencyCell {
	vs, err := vias(d, len(d.directs), true)
	if err != nil {
		return []LatencyCell{{Via: ViaLockd(), Unmeasured: err.Error()}}
	}
	defer closeVias(vs)
	var cells []LatencyCell
	pids, note := storePIDs(d)
	for i, v := range vs {
		var (
			h   *hdrhistogram.Histogram
			err error
		)
		c := LatencyCell{Via: v.name}
		c.CPU = profileCPU(pids, note, func() int64 {
			if h, err = measureLatency(ctx, v.newClient, cfg.Duration, b.part(i, len(vs))); h == nil {
				return 0
			}
			return h.TotalCount()
		})
		c.CPU.save(cfg.Out, name+"-latency-"+v.name)
		if h != nil {
			c.Lat, c.CDF = percentiles(h), cdf(h)
		}
		if err != nil {
			c.Unmeasured = err.Error()
		} else if c.Lat == nil {
			c.Unmeasured = "no sample in the run"
		}
		cells = append(cells, c)
	}
	return cells
}

func runHandoff(ctx context.Context, d *deployment, cfg Config, sz Sizes, b *bar) []HandoffCell {
	vs, err := vias(d, len(d.directs), true)
	if err != nil {
		return []HandoffCell{{Via: ViaLockd(), Unmeasured: err.Error()}}
	}
	defer closeVias(vs)
	var cells []HandoffCell
	n, i := len(vs)*len(sz.HandoffWaiters), 0
	for _, w := range sz.HandoffWaiters {
		for _, v := range vs {
			probe, perr := v.order()
			r, err := measureHandoff(ctx, v.newClient, w, cfg.Duration, b.part(i, n))
			i++
			c := HandoffCell{Via: v.name, Waiters: w, Grants: r.Grants, Handoffs: r.Handoffs, ReWins: r.ReWins, EarlyGrants: r.EarlyGrants,
				FIFOViolations: r.FIFOViolations, LongestWaitMs: ms64(r.LongestWait)}
			if v.lockd {
				c.StoreOrder = storeOrderOf(d, probe, perr, r.Tokens)
			}
			if r.Hist != nil {
				c.Lat, c.CDF = percentiles(r.Hist), cdf(r.Hist)
			}
			if err != nil {
				c.Error = err.Error()
			}
			if c.Lat == nil {
				c.Unmeasured = fmt.Sprintf("no handoff in %s (%d grants)", cfg.Duration, r.Grants)
				if err != nil {
					c.Unmeasured += ": " + err.Error()
				}
			}
			cells = append(cells, c)
		}
	}
	return cells
}

func runThroughput(ctx context.Context, d *deployment, cfg Config, sz Sizes, b *bar) []ThroughputCell {
	vs, err := vias(d, sz.TputDirects, false)
	if err != nil {
		return []ThroughputCell{{Via: ViaLockd(), Unmeasured: err.Error()}}
	}
	defer closeVias(vs)
	cellDur := cfg.Duration / 2
	if !cfg.Quick {
		cellDur = max(cfg.Duration/4, 1500*time.Millisecond)
	}
	cellDur = max(cellDur, 500*time.Millisecond)
	var cells []ThroughputCell
	n, i := len(vs)*len(sz.TputClients)*len(sz.TputKeys), 0
	for _, keys := range sz.TputKeys {
		for _, clients := range sz.TputClients {
			for _, v := range vs {
				probe, perr := v.order()
				r, err := measureThroughput(ctx, v.newClient, clients, keys, cellDur, b.part(i, n))
				i++
				c := ThroughputCell{Via: v.name, Clients: clients, Keys: keys, Grants: r.Grants, Errors: r.Errors}
				if v.lockd {
					c.StoreOrder = storeOrderOf(d, probe, perr, r.Tokens)
				}
				if err != nil {
					c.Unmeasured = err.Error()
				} else {
					c.PerSec = float64(r.Grants) / r.Elapsed.Seconds()
					c.CPUPer1000 = r.CPUSeconds / float64(r.Grants) * 1000
				}
				cells = append(cells, c)
			}
		}
	}
	return cells
}

func runRoundTrips(ctx context.Context, d *deployment, sz Sizes, b *bar) []RoundTripCell {
	type one struct {
		name string
		make func(rt *rtCounter) (Locker, func(), error)
	}
	ways := []one{{name: ViaLockd(), make: func(rt *rtCounter) (Locker, func(), error) {
		if d.noBackend != "" {
			return nil, nil, errors.New(d.noBackend)
		}
		bk, err := d.newBackend(d.Addrs, rt)
		if err != nil {
			return nil, nil, err
		}
		r, err := startLockd(bk)
		if err != nil {
			bk.Close()
			return nil, nil, err
		}
		l := r.Locker()
		return l, func() { l.Close(); r.stop() }, nil
	}}}
	for _, dl := range d.directs {
		ways = append(ways, one{name: dl.Name, make: func(rt *rtCounter) (Locker, func(), error) {
			l, err := dl.New(d.Addrs, rt)
			if err != nil {
				return nil, nil, err
			}
			return l, func() { l.Close() }, nil
		}})
	}
	var cells []RoundTripCell
	for i, w := range ways {
		b.set(float64(i) / float64(len(ways)))
		c := RoundTripCell{Via: w.name, Samples: sz.RTSamples, Counted: d.rtHow}
		rt := &rtCounter{}
		l, closeFn, err := w.make(rt)
		if err != nil {
			c.Unmeasured = err.Error()
			cells = append(cells, c)
			continue
		}
		c.PerAcquire, c.PerRelease, err = measureRoundTrips(ctx, l, rt, sz.RTSamples)
		closeFn()
		if err != nil {
			c.Unmeasured = err.Error()
			c.PerAcquire, c.PerRelease = 0, 0
		}
		cells = append(cells, c)
	}
	return cells
}

func skewStatus(s *SkewResult) string {
	if s.Unmeasured != "" {
		return ""
	}
	return fmt.Sprintf("; beyond the bound: not ready %v (after %s), %d double grants while it kept serving",
		s.NotReady, fmtDur(s.NotReadyAfterMs), s.WithoutGate.Overlaps)
}

func lostReplyStatus(r *LostReplyResult) string {
	if r.Unmeasured != "" {
		return "not measured: " + r.Unmeasured
	}
	verdict := "PASS"
	if !r.Pass {
		verdict = "FAIL"
	}
	return fmt.Sprintf("%s: with Idempotency-Key %d lost, %d orphaned; without %d lost, %d keys blocked",
		verdict, r.Keyed.Lost, r.Keyed.Orphaned, r.Unkeyed.Lost, r.Unkeyed.Blocked)
}

func historyStatus(h *HistoryResult) string {
	if h.Unmeasured != "" {
		return "not measured: " + h.Unmeasured
	}
	return fmt.Sprintf("%d cycles: p50 first 500 %.0f µs, last 500 %.0f µs, fresh key %.0f µs; store after: %s", h.Cycles, h.FirstUs, h.LastUs, h.FreshUs, h.StoreAfter)
}
