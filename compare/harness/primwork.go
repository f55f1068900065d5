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

// The primitive workloads: beside the lock workload of every correctness
// cell, as the leadership workload runs, a few clients hold permits of a
// semaphore of semWorkPermits, each writing to a fenced register per
// (key, slot) with its token, and a few others take a read-write lock in
// either mode. They run on the same replicas under the same fault and use
// their grants as careful clients do: a grant that arrives with less than
// two thirds of its TTL left is renewed at once, and nothing is written
// past the holder's own deadline (send of its last acquire or renew +
// TTL). A holder holds from the grant's return until it sends its release
// or its deadline passes, whichever comes first: the registers count who
// holds at once over that span, not only inside the critical section (on a
// loaded machine the renew and the HTTP round trips took longer than the
// section, and a semaphore granting beyond N was seen in one run of three).
// Permits are held a TTL on average, renewed every TTL/3 as the Go client
// renews: with a quarter TTL unrenewed, a loaded machine's slow acquires
// left so few permits held at once that granting beyond N still went
// unseen in three runs.
const (
	CheckSemOverN        = "semaphores: over N permits"
	CheckSemSlotOrder    = "semaphores: slot token order"
	CheckRWWriterOverlap = "rwlocks: writer overlap"
)

// The workloads' sizes: twice as many semaphore clients as permits, so
// that the semaphore is full and a line waits behind it most of the time
// (with one client more than permits, on a machine at load 20, a backend
// granting beyond N went unseen in three runs: the four clients were
// seldom all holding). Only holders renew, so the waiters cost little.
const (
	semWorkPermits = 3
	semWorkClients = 2 * semWorkPermits
	rwWorkClients  = 3
)

// primWorkload is one primitive's loop: acquire (waiting) → enter → think →
// write → leave → release, on one key.
type primWorkload struct {
	clients                   int
	ttl, wait, hold, duration time.Duration
	seed                      uint64
	key                       string
	// client is the client c talks to now (it moves after a failure).
	client  func(c int) primClient
	onError func(c int, err error)
	// req fills in what the acquire asks for beyond the key and times.
	req func(c int, rng *rand.Rand) primReq
	// The register's view of one grant: held when it returns (the holder
	// holds from then until it sends its release, or its deadline passes);
	// extend when a renew moved the deadline; write inside the critical
	// section, within the deadline; leave as the release is sent.
	held   func(c int, l *primLease, deadline, now time.Time)
	extend func(c int, deadline time.Time)
	write  func(c int, l *primLease, deadline, now time.Time)
	leave  func(c int)
}

// primCounts is what a primitive workload's clients saw.
type primCounts struct {
	Attempts, Granted, TimedOut, Errors int64
	FirstError                          string
}

func (w *primWorkload) run(ctx context.Context) primCounts {
	var res primCounts
	var mu sync.Mutex
	runCtx, cancel := context.WithTimeout(ctx, w.duration)
	defer cancel()
	var wg sync.WaitGroup
	for c := 0; c < w.clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(w.seed, uint64(c)))
			for runCtx.Err() == nil {
				cl := w.client(c)
				req := w.req(c, rng)
				req.Key, req.Owner, req.TTL, req.Wait = w.key, fmt.Sprintf("client-%d", c), w.ttl, w.wait
				actx, acancel := context.WithTimeout(runCtx, w.wait+overrunSlack/2)
				l, err := cl.acquire(actx, req)
				acancel()
				mu.Lock()
				if err == nil || runCtx.Err() == nil {
					res.Attempts++
				}
				switch {
				case err == nil:
					res.Granted++
				case runCtx.Err() != nil:
				case errors.Is(err, backend.ErrHeld):
					res.TimedOut++
				default:
					res.Errors++
					if res.FirstError == "" {
						res.FirstError = err.Error()
					}
				}
				mu.Unlock()
				if err != nil {
					if !errors.Is(err, backend.ErrHeld) && runCtx.Err() == nil && w.onError != nil {
						w.onError(c, err)
					}
					sleepCtx(runCtx, time.Duration(5+rng.IntN(10))*time.Millisecond)
					continue
				}
				w.held(c, l, l.Deadline(), time.Now())
				w.use(runCtx, c, cl, l, rng)
				w.leave(c)
				rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
				if err := cl.release(rctx, l); err != nil && !errors.Is(err, backend.ErrLeaseExpired) && w.onError != nil {
					w.onError(c, err)
				}
				rcancel()
				sleepCtx(runCtx, time.Duration(rng.Int64N(int64(w.ttl/20)+1)))
			}
		}()
	}
	wg.Wait()
	return res
}

// use is the critical section of one grant: 0..2×hold long, renewed
// every TTL/3 on the way when it outlasts that (as the Go client renews);
// a renew that fails ends it without a write.
func (w *primWorkload) use(ctx context.Context, c int, cl primClient, l *primLease, rng *rand.Rand) {
	renew := func() bool {
		sent := time.Now()
		rctx, cancel := context.WithTimeout(ctx, w.ttl)
		err := cl.renew(rctx, l, w.ttl)
		cancel()
		if err != nil {
			return false
		}
		l.Sent = sent
		w.extend(c, l.Deadline())
		return true
	}
	if time.Until(l.Deadline()) <= w.ttl*2/3 && !renew() {
		return
	}
	end := time.Now().Add(time.Duration(rng.Int64N(int64(2*w.hold) + 1)))
	for {
		next := l.Sent.Add(w.ttl / 3)
		if !next.Before(end) {
			break
		}
		sleepCtx(ctx, time.Until(next))
		if ctx.Err() != nil || !renew() {
			return
		}
	}
	time.Sleep(time.Until(end))
	if now, deadline := time.Now(), l.Deadline(); now.Before(deadline) {
		w.write(c, l, deadline, now)
	}
}

// primRun is one primitive's workload running beside a cell's lock
// workload.
type primRun struct {
	done chan struct{}
	res  primCounts
	n    int
	// none says why it does not run.
	none string
}

// startPrim starts a primitive's workload over the replicas current
// returns, moving a client to the next live replica when its call fails.
// none, when not empty, says why it does not run.
func startPrim(ctx context.Context, w *primWorkload, feature string, current func() []*lockdReplica, none string) *primRun {
	pr := &primRun{done: make(chan struct{}), n: w.clients, none: none}
	rs := current()
	if pr.none == "" && len(rs) == 0 {
		pr.none = "no lockd replica"
	}
	if pr.none == "" {
		if why := primSupport(ctx, rs[0], feature); why != "" {
			pr.none = "not supported: " + why
		}
	}
	if pr.none != "" {
		close(pr.done)
		return pr
	}
	type ref struct {
		c       primClient
		replica int
	}
	refs := make([]atomic.Pointer[ref], w.clients)
	var mu sync.Mutex
	var made []primClient
	refOf := func(r *lockdReplica, i int) *ref {
		c := r.primClientOf(feature)
		mu.Lock()
		made = append(made, c)
		mu.Unlock()
		return &ref{c: c, replica: i}
	}
	for c := range refs {
		refs[c].Store(refOf(rs[c%len(rs)], c%len(rs)))
	}
	w.client = func(c int) primClient { return refs[c].Load().c }
	w.onError = func(c int, err error) {
		cur := refs[c].Load()
		rs := current()
		for k := 1; k < len(rs); k++ {
			j := (cur.replica + k) % len(rs)
			if !rs[j].dead() {
				refs[c].CompareAndSwap(cur, refOf(rs[j], j))
				return
			}
		}
	}
	go func() {
		defer close(pr.done)
		pr.res = w.run(ctx)
		mu.Lock()
		for _, c := range made {
			c.Close()
		}
		mu.Unlock()
	}()
	return pr
}

// primitivesRun is both primitive workloads of a cell.
type primitivesRun struct {
	sem, rw       *primRun
	semReg        *semRegister
	rwReg         *rwRegister
	permits       int
	semKey, rwKey string
}

// startPrimitives starts the semaphore and read-write lock workloads beside
// a cell's lock workload; off leaves them out (as it leaves out the
// leadership workload).
func startPrimitives(ctx context.Context, cfg CorrectnessConfig, current func() []*lockdReplica, off bool) *primitivesRun {
	none := ""
	if off {
		none = "only the lock workload in this run"
	}
	stamp := time.Now().UnixNano()
	p := &primitivesRun{permits: semWorkPermits, semReg: newSemRegister(semWorkPermits), rwReg: newRWRegister()}
	// Permits are held long, renewed on the way (a TTL on average, up to
	// two), so that the semaphore is full and its line waits most of the
	// time; read-write locks a third of the TTL on average (with a tenth,
	// the read-write lock traffic on embedded etcd cut the lock workload's
	// grants beside it from 35-64 to 4-20 a run at load 10-20, and its
	// checks turned red).
	sem := &primWorkload{clients: semWorkClients, ttl: cfg.TTL, wait: cfg.Wait, hold: max(cfg.Hold, cfg.TTL), duration: cfg.Duration, seed: cfg.Seed + 2,
		key: fmt.Sprintf("compare-sem-%d", stamp),
		req: func(int, *rand.Rand) primReq { return primReq{Permits: semWorkPermits} },
		held: func(c int, l *primLease, deadline, now time.Time) {
			p.semReg.hold(c, l.Slot, l.Token, deadline, now)
		},
		extend: p.semReg.extend,
		write: func(c int, l *primLease, deadline, now time.Time) {
			p.semReg.write(c, l.Slot, l.Token, deadline, now)
		},
		leave: p.semReg.leave}
	rw := &primWorkload{clients: rwWorkClients, ttl: cfg.TTL, wait: cfg.Wait, hold: max(cfg.Hold, cfg.TTL/3), duration: cfg.Duration, seed: cfg.Seed + 3,
		key: fmt.Sprintf("compare-rw-%d", stamp),
		req: func(_ int, rng *rand.Rand) primReq {
			if rng.IntN(3) == 0 {
				return primReq{Mode: backend.ModeWrite}
			}
			return primReq{Mode: backend.ModeRead}
		},
		held: func(c int, l *primLease, deadline, now time.Time) {
			p.rwReg.hold(c, l.Mode, deadline, now)
		},
		extend: p.rwReg.extend,
		write:  func(int, *primLease, time.Time, time.Time) {},
		leave:  p.rwReg.leave}
	p.semKey, p.rwKey = sem.key, rw.key
	p.sem = startPrim(ctx, sem, backend.FeatureSemaphores, current, none)
	p.rw = startPrim(ctx, rw, backend.FeatureRWLocks, current, none)
	return p
}

// SemaphoreWork is the semaphore workload of a correctness cell.
type SemaphoreWork struct {
	Clients  int   `json:"clients"`
	Permits  int   `json:"permits"`
	Attempts int64 `json:"acquires_attempted"`
	Granted  int64 `json:"acquires_granted"`
	TimedOut int64 `json:"acquires_timed_out"`
	Errors   int64 `json:"acquires_failed"`
	// OverN: grants that returned while N other permits were held and
	// valid by their holders' own deadlines (so N+1 at once). MostInside is
	// the most valid permits seen held at once.
	OverN      int64  `json:"over_n_permits"`
	FirstOverN string `json:"first_over_n,omitempty"`
	MostInside int    `json:"most_valid_permits_inside"`
	// SlotRegressions: writes, within the writer's own deadline, with a
	// token below one the slot's register had already taken.
	SlotRegressions int64  `json:"slot_token_regressions"`
	FirstRegression string `json:"first_slot_regression,omitempty"`
	Writes          int64  `json:"writes"`
	// StaleRefused: writes a slot's fence refused (a lower token than it
	// had taken, from a holder past its deadline or a regression).
	StaleRefused int64  `json:"stale_writes_refused"`
	FirstError   string `json:"first_error,omitempty"`
}

// RWLockWork is the read-write lock workload of a correctness cell.
type RWLockWork struct {
	Clients  int   `json:"clients"`
	Attempts int64 `json:"acquires_attempted"`
	Granted  int64 `json:"acquires_granted"`
	TimedOut int64 `json:"acquires_timed_out"`
	Errors   int64 `json:"acquires_failed"`
	Writes   int64 `json:"write_grants_used"`
	Reads    int64 `json:"read_grants_used"`
	// SharedReads: read grants that returned while another valid reader
	// held (the shared mode at work).
	SharedReads int64 `json:"reads_shared"`
	// Overlaps: a writer holding (grant returned, release not sent) while
	// another holder held, both valid by their holders' own deadlines;
	// ExpiredOverlaps: the same with either one past its deadline.
	Overlaps        int64  `json:"writer_overlaps"`
	ExpiredOverlaps int64  `json:"expired_overlaps"`
	FirstOverlap    string `json:"first_writer_overlap,omitempty"`
	FirstError      string `json:"first_error,omitempty"`
}

// finish waits for both workloads and adds their checks to c.
func (p *primitivesRun) finish(c *CorrectnessCell) {
	<-p.sem.done
	<-p.rw.done
	if p.sem.none != "" {
		c.addChecks(Check{Name: CheckSemOverN, NotApplicable: p.sem.none}, Check{Name: CheckSemSlotOrder, NotApplicable: p.sem.none})
	} else {
		r, st := p.sem.res, p.semReg.stats()
		c.Semaphore = &SemaphoreWork{Clients: p.sem.n, Permits: p.permits, Attempts: r.Attempts, Granted: r.Granted, TimedOut: r.TimedOut,
			Errors: r.Errors, FirstError: r.FirstError, OverN: st.overN, FirstOverN: st.firstOverN, MostInside: st.most,
			SlotRegressions: st.regressions, FirstRegression: st.firstRegression, Writes: st.writes, StaleRefused: st.refused}
		got := func(n int64) string { return fmt.Sprintf("%d (%d permits granted)", n, r.Granted) }
		c.addChecks(
			Check{Name: CheckSemOverN, Threshold: fmt.Sprintf("0 instants with more than N = %d valid permits held", p.permits),
				Got: got(st.overN) + fmt.Sprintf(", most at once %d", st.most), Applies: true, Pass: st.overN == 0},
			Check{Name: CheckSemSlotOrder, Threshold: "0 writes within the writer's lease with a token below one its slot had taken",
				Got: got(st.regressions), Applies: true, Pass: st.regressions == 0},
		)
	}
	if p.rw.none != "" {
		c.addChecks(Check{Name: CheckRWWriterOverlap, NotApplicable: p.rw.none})
		return
	}
	r, st := p.rw.res, p.rwReg.stats()
	c.RWLock = &RWLockWork{Clients: p.rw.n, Attempts: r.Attempts, Granted: r.Granted, TimedOut: r.TimedOut, Errors: r.Errors,
		FirstError: r.FirstError, Writes: st.writes, Reads: st.reads, SharedReads: st.shared,
		Overlaps: st.overlaps, ExpiredOverlaps: st.expired, FirstOverlap: st.first}
	c.addChecks(Check{Name: CheckRWWriterOverlap, Threshold: "0 overlaps of a writer with another valid holder",
		Got: fmt.Sprintf("%d (%d writes, %d reads, %d of them shared)", st.overlaps, st.writes, st.reads, st.shared), Applies: true, Pass: st.overlaps == 0})
}
