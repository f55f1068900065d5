package harness

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/lockd/lockd/backend"
)

// workload is the correctness workload: clients loop acquire(wait) →
// read-modify-write the registers → release, on one key, while a fault
// scenario runs beside them.
type workload struct {
	Clients  int
	TTL      time.Duration
	Wait     time.Duration
	Hold     time.Duration // mean think time inside the critical section
	Duration time.Duration
	Seed     uint64

	// locker returns the lock service client i talks to now; it may change
	// during the run (a replica died and the client moved on).
	locker func(client int) Locker
	// onError is told when client's call failed other than by ErrHeld, so
	// a scenario can move that client elsewhere.
	onError func(client int, err error)
	// stall, when set, is asked after each grant how long the client must
	// stall before writing (a GC pause); zero means no stall.
	stall func(client int, grantedAt time.Time) time.Duration
	// vanish, when set, is asked before each acquire whether this waiter's
	// client disappears mid-wait, and after how long.
	vanish func(client int) (time.Duration, bool)
	// giveUp, when set, is how long past its wait a client waits for an
	// acquire's answer before it gives up on that replica (a client with its
	// own deadline, as behind a load balancer).
	giveUp time.Duration
}

// opKind of a history entry.
type opKind int

const (
	opAcquire opKind = iota
	opRMW
)

// histOp is one operation of the recorded history.
type histOp struct {
	Kind   opKind
	Client int
	Call   time.Time
	Return time.Time
	// acquire
	Granted bool
	Unknown bool // the call failed in a way that may hide a grant
	// Vanished: the client walked away mid-wait (it asked for no answer).
	Vanished bool
	Token    uint64
	// rmw
	Deadline             time.Time // the client's bound on its lease when it read
	FRead, URead         int64
	FAccepted, UAccepted bool
}

// death is an instant after which a holder stopped acting (paused, its
// lockd killed); time to free is measured from it to the next grant to
// another client.
type death struct {
	Client int
	At     time.Time
}

type workloadResult struct {
	Started, Ended time.Time
	Attempts       int64
	Granted        int64
	TimedOut       int64 // ErrHeld after the full wait
	Errors         int64 // unavailable, transport, cancelled
	Vanished       int64
	// Unconfirmed: grants whose at-once renew after a long wait failed (the
	// client released them unused, as client.AcquireLease does). Unused:
	// grants whose deadline passed before the client could use them.
	Unconfirmed, Unused int64
	FirstError          string
	Fenced              registerStats
	Unfenced            registerStats
	History             []histOp
	Deaths              []death
	LongestUnavail      time.Duration
	LongestUnavailFrom  time.Time // when the longest stretch without a grant began
	TimeToFree          []time.Duration
	StalledHandoffs     int64 // gaps > TTL/2 right after a vanished waiter
	// Overran counts acquires that returned more than overrunSlack after
	// their wait ran out (including calls cut off only by the end of the run).
	Overran     int64
	LongestCall time.Duration
	// TokenRegressions counts grants whose token was not above every token
	// granted before them (in the order the grants returned).
	TokenRegressions int64
	// FIFOViolations counts grants that overtook an earlier waiter.
	FIFOViolations int64
	FIFOWorst      time.Duration
	FirstFIFO      string
}

const overrunSlack = time.Second

func (w *workload) run(ctx context.Context, progress func(done float64)) workloadResult {
	fenced, unfenced := newRegister(true), newRegister(false)
	res := workloadResult{Started: time.Now()}
	var mu sync.Mutex // guards res fields written by clients
	// A key of its own: what an earlier run left in the store (a dead
	// replica's queue entry) must not stall this one.
	key := fmt.Sprintf("compare-correctness-%d", time.Now().UnixNano())
	runCtx, cancel := context.WithTimeout(ctx, w.Duration)
	defer cancel()

	var vanishTimes []time.Time
	var wg sync.WaitGroup
	for c := 0; c < w.Clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(w.Seed, uint64(c)))
			owner := fmt.Sprintf("client-%d", c)
			for runCtx.Err() == nil {
				l := w.locker(c)
				actx, acancel := context.WithCancel(runCtx)
				if w.giveUp > 0 {
					actx, acancel = context.WithTimeout(runCtx, w.Wait+w.giveUp)
				}
				vanishing := false
				if w.vanish != nil {
					if after, ok := w.vanish(c); ok {
						vanishing = true
						time.AfterFunc(after, acancel)
					}
				}
				call := time.Now()
				lease, err := l.Acquire(actx, key, owner, w.TTL, w.Wait)
				ret := time.Now()
				acancel()
				op := histOp{Kind: opAcquire, Client: c, Call: call, Return: ret}
				switch {
				case err == nil:
					op.Granted, op.Token = true, lease.Token
				case errors.Is(err, backend.ErrHeld):
				default:
					op.Unknown = true
				}
				mu.Lock()
				counted := err == nil || runCtx.Err() == nil
				switch {
				case err == nil:
					res.Granted++
				case vanishing && actx.Err() != nil && runCtx.Err() == nil:
					// A vanished client did not ask to be served.
					res.Vanished++
					op.Vanished = true
					counted = false
					vanishTimes = append(vanishTimes, ret)
				case runCtx.Err() != nil:
				case errors.Is(err, backend.ErrHeld):
					res.TimedOut++
				default:
					res.Errors++
					if res.FirstError == "" {
						res.FirstError = err.Error()
					}
				}
				if counted {
					res.Attempts++
				}
				// A call may not outlive its wait by much: the contract
				// bounds an acquire by req.Wait.
				if took := ret.Sub(call); !vanishing && took > w.Wait+overrunSlack {
					res.Overran++
					res.LongestCall = max(res.LongestCall, took)
				}
				res.History = append(res.History, op)
				mu.Unlock()
				if err != nil {
					if !errors.Is(err, backend.ErrHeld) && runCtx.Err() == nil && !vanishing && w.onError != nil {
						w.onError(c, err)
					}
					sleepCtx(runCtx, time.Duration(5+rng.IntN(10))*time.Millisecond)
					continue
				}
				release := func() {
					rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
					if err := l.Release(rctx, lease); err != nil && !errors.Is(err, backend.ErrLeaseExpired) && w.onError != nil {
						w.onError(c, err)
					}
					rcancel()
				}
				// A careful client, as client.AcquireLease is: after a long
				// wait the deadline counted from the acquire's send is mostly
				// spent, so it renews at once and counts from the renew's send.
				if time.Until(lease.Deadline()) <= w.TTL*2/3 && !w.freshen(runCtx, l, lease) {
					mu.Lock()
					res.Unconfirmed++
					mu.Unlock()
					release()
					continue
				}
				// The critical section: read, think, write, on both registers.
				// A careful client never starts it, nor writes, on a lease past
				// its own deadline; only a pause between its check and its
				// write (the stall fault) can make it write late.
				start := time.Now()
				if !start.Before(lease.Deadline()) {
					mu.Lock()
					res.Unused++
					mu.Unlock()
					release()
					continue
				}
				fr, fseq := fenced.read(c, lease.Token, lease.Deadline(), start)
				ur, useq := unfenced.read(c, lease.Token, lease.Deadline(), start)
				time.Sleep(time.Duration(rng.Int64N(int64(2*w.Hold) + 1)))
				if !time.Now().Before(lease.Deadline()) {
					fenced.abandon(c)
					unfenced.abandon(c)
					mu.Lock()
					res.Unused++
					mu.Unlock()
					release()
					continue
				}
				if w.stall != nil {
					if d := w.stall(c, ret); d > 0 {
						mu.Lock()
						res.Deaths = append(res.Deaths, death{Client: c, At: time.Now()})
						mu.Unlock()
						time.Sleep(d)
					}
				}
				end := time.Now()
				fa, _ := fenced.write(c, fseq, lease.Token, fr, end)
				ua, _ := unfenced.write(c, useq, lease.Token, ur, end)
				mu.Lock()
				res.History = append(res.History, histOp{Kind: opRMW, Client: c, Call: start, Return: time.Now(),
					Token: lease.Token, Deadline: lease.Deadline(), FRead: fr, URead: ur, FAccepted: fa, UAccepted: ua})
				mu.Unlock()
				release()
			}
		}(c)
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		case <-tick.C:
			if progress != nil {
				progress(float64(time.Since(res.Started)) / float64(w.Duration))
			}
		}
	}
	res.Ended = time.Now()
	res.Fenced, res.Unfenced = fenced.stats(), unfenced.stats()
	sort.Slice(res.History, func(i, j int) bool { return res.History[i].Call.Before(res.History[j].Call) })
	res.LongestUnavail, res.LongestUnavailFrom = longestGapFrom(res.History, res.Started, res.Ended)
	res.TimeToFree = timesToFree(res.History, res.Deaths)
	res.StalledHandoffs = stalledAfter(res.History, vanishTimes, w.TTL/2)
	res.TokenRegressions = tokenRegressions(res.History)
	res.FIFOViolations, res.FIFOWorst, res.FirstFIFO = fifoViolations(res.History, w.Wait, fifoCheckSlack)
	return res
}

// freshen renews lease at once and, when the renew succeeds, moves its
// deadline to the renew's send + TTL. It reports whether the lease may be
// used; a locker that cannot renew (none in the correctness workload) keeps
// the lease as it is.
func (w *workload) freshen(ctx context.Context, l Locker, lease *Lease) bool {
	r, ok := l.(renewer)
	if !ok {
		return true
	}
	sent := time.Now()
	rctx, cancel := context.WithTimeout(ctx, w.TTL)
	defer cancel()
	if err := r.Renew(rctx, lease, w.TTL); err != nil {
		return false
	}
	lease.Sent = sent
	return true
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func grantTimes(h []histOp) []time.Time {
	var ts []time.Time
	for _, op := range h {
		if op.Kind == opAcquire && op.Granted {
			ts = append(ts, op.Return)
		}
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
	return ts
}

// longestGap is the longest stretch of the run with no grant at all: while
// it lasted, every client that asked for the lock went without.
func longestGap(h []histOp, start, end time.Time) time.Duration {
	d, _ := longestGapFrom(h, start, end)
	return d
}

// longestGapFrom is longestGap and the moment it began.
func longestGapFrom(h []histOp, start, end time.Time) (time.Duration, time.Time) {
	prev, longest, from := start, time.Duration(0), start
	for _, t := range append(grantTimes(h), end) {
		if d := t.Sub(prev); d > longest {
			longest, from = d, prev
		}
		prev = t
	}
	return longest, from
}

// timesToFree measures, for every dead holder, how long until another
// client was granted the lock.
func timesToFree(h []histOp, deaths []death) []time.Duration {
	var out []time.Duration
	for _, d := range deaths {
		for _, op := range h {
			if op.Kind == opAcquire && op.Granted && op.Client != d.Client && op.Return.After(d.At) {
				out = append(out, op.Return.Sub(d.At))
				break
			}
		}
	}
	return out
}

// stalledAfter counts vanished waiters after which the lock sat unused for
// longer than limit: a slot the vanished client left behind.
func stalledAfter(h []histOp, vanished []time.Time, limit time.Duration) int64 {
	gs := grantTimes(h)
	var n int64
	for _, v := range vanished {
		i := sort.Search(len(gs), func(i int) bool { return gs[i].After(v) })
		if i < len(gs) && gs[i].Sub(v) > limit {
			n++
		}
	}
	return n
}

func tokenRegressions(h []histOp) int64 {
	var gs []histOp
	for _, op := range h {
		if op.Kind == opAcquire && op.Granted {
			gs = append(gs, op)
		}
	}
	// Real-time order: a grant must carry a token above every grant that
	// had returned before it was asked for. Two acquires that overlap in
	// time are concurrent, and either may hold the lower token (a reply
	// held back by a paused replica returns after later grants did).
	sort.Slice(gs, func(i, j int) bool { return gs[i].Return.Before(gs[j].Return) })
	highest := make([]uint64, len(gs)) // highest[i]: max token of gs[:i+1]
	for i, g := range gs {
		highest[i] = g.Token
		if i > 0 {
			highest[i] = max(highest[i], highest[i-1])
		}
	}
	var n int64
	for _, g := range gs {
		// gs[:k] returned before g was called.
		k := sort.Search(len(gs), func(i int) bool { return !gs[i].Return.Before(g.Call) })
		if k > 0 && g.Token <= highest[k-1] {
			n++
		}
	}
	return n
}
