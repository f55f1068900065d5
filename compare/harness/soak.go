package harness

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The mixed-fault soak: the correctness workload over three lockd replicas
// while a seeded generator injects one fault after another, each longer than
// the TTL, with a gap between them. Clients whose call fails, or gets no
// answer within wait + giveUp, move to the next live replica, as behind a
// load balancer. The verdict is the full check table.

// soakFault is one kind of fault: start injects it and returns how to heal
// it, or an error when it could not be injected.
type soakFault struct {
	name  string
	start func(ctx context.Context) (heal func(), err error)
}

type soakEnv struct {
	d         *deployment
	cfg       CorrectnessConfig
	px        *proxies
	tl        *timeline
	lockers   []atomic.Pointer[lockerRef]
	holding   map[int]bool
	holdingMu *sync.Mutex
	addDeath  func(death)
	addrs     []string

	mu       sync.Mutex // guards *replicas and longest
	replicas *[]*lockdReplica
	longest  time.Duration
}

func (e *soakEnv) replica(i int) *lockdReplica {
	e.mu.Lock()
	defer e.mu.Unlock()
	return (*e.replicas)[i]
}

func (r *lockdReplica) dead() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.killed
}

// moveClient moves client c to the next live replica after a failed call.
func (e *soakEnv) moveClient(c int, err error) {
	ref := e.lockers[c].Load()
	e.mu.Lock()
	rs := *e.replicas
	e.mu.Unlock()
	for k := 1; k < len(rs); k++ {
		j := (ref.replica + k) % len(rs)
		if rs[j].dead() {
			continue
		}
		if e.lockers[c].CompareAndSwap(ref, &lockerRef{l: rs[j].Locker(), replica: j}) {
			e.tl.add("client %d moves from replica %d to %d (%v)", c, ref.replica, j, short(err))
		}
		return
	}
}

func (e *soakEnv) longestWindow() time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.longest
}

// faults lists what this deployment can suffer.
func (e *soakEnv) faults(rng *rand.Rand) []soakFault {
	fs := []soakFault{
		{name: "lockd replica killed", start: func(ctx context.Context) (func(), error) {
			k := rng.IntN(3)
			r := e.replica(k)
			e.holdingMu.Lock()
			for c := range e.holding {
				if e.lockers[c].Load().replica == k {
					e.addDeath(death{Client: c, At: time.Now()})
				}
			}
			e.holdingMu.Unlock()
			r.kill()
			e.tl.add("lockd replica %d killed", k)
			return func() {
				b, err := e.d.newBackend(e.addrs, nil)
				if err != nil {
					e.tl.add("replica %d not restarted: %v", k, err)
					return
				}
				nr, err := startLockd(b)
				if err != nil {
					b.Close()
					e.tl.add("replica %d not restarted: %v", k, err)
					return
				}
				e.mu.Lock()
				(*e.replicas)[k] = nr
				e.mu.Unlock()
				e.tl.add("a fresh lockd replica %d started", k)
			}, nil
		}},
		{name: "lockd replica paused", start: func(ctx context.Context) (func(), error) {
			k := rng.IntN(3)
			r := e.replica(k)
			r.gate.pause()
			e.tl.add("lockd replica %d paused (requests and replies held)", k)
			return func() { r.gate.resume(); e.tl.add("lockd replica %d continues", k) }, nil
		}},
		{name: "store member SIGKILL", start: func(ctx context.Context) (func(), error) {
			v := e.d.victim()
			if err := e.d.kill(v); err != nil {
				return nil, err
			}
			e.tl.add("store member %d killed", v)
			return func() {
				if err := e.d.restart(v); err != nil {
					e.tl.add("restart member %d failed: %v", v, err)
					return
				}
				e.tl.add("store member %d serving again", v)
			}, nil
		}},
		{name: "lockd ↔ store partition", start: func(ctx context.Context) (func(), error) {
			if err := e.px.add("cut", "timeout", `{"timeout":0}`); err != nil {
				return nil, err
			}
			e.tl.add("network cut between lockd and the store")
			return func() { e.px.remove("cut"); e.tl.add("network healed") }, nil
		}},
		{name: "latency", start: func(ctx context.Context) (func(), error) {
			if err := e.px.add("spike", "latency", `{"latency":100,"jitter":50}`); err != nil {
				return nil, err
			}
			e.tl.add("latency 100±50 ms each way between lockd and the store")
			return func() { e.px.remove("spike"); e.tl.add("latency off") }, nil
		}},
	}
	if e.d.signal != nil {
		fs = append(fs, soakFault{name: "store member SIGSTOP", start: func(ctx context.Context) (func(), error) {
			v := e.d.victim()
			if err := e.d.signal(v, syscall.SIGSTOP); err != nil {
				return nil, err
			}
			e.tl.add("store member %d stopped (SIGSTOP)", v)
			return func() {
				if err := e.d.signal(v, syscall.SIGCONT); err != nil {
					e.tl.add("SIGCONT member %d failed: %v", v, err)
					return
				}
				e.tl.add("store member %d continued", v)
			}, nil
		}})
	}
	return fs
}

// run injects faults until the last one would not heal before the end.
func (e *soakEnv) run(ctx context.Context) {
	rng := rand.New(rand.NewPCG(e.cfg.Seed, 0x50a4))
	fs := e.faults(rng)
	ttl := e.cfg.TTL
	end := time.Now().Add(e.cfg.Duration - 2*ttl)
	sleepCtx(ctx, 2*ttl)
	for ctx.Err() == nil {
		dur := 2*ttl + time.Duration(rng.Int64N(int64(ttl)))
		if time.Now().Add(dur).After(end) {
			return
		}
		f := fs[rng.IntN(len(fs))]
		from := time.Now()
		heal, err := f.start(ctx)
		if err != nil {
			e.tl.add("%s not injected: %v", f.name, err)
		} else {
			sleepCtx(ctx, dur)
			heal()
			// Every fault counts: a paused replica's clients are out of
			// service until they give up on it, a killed one's holders
			// until their leases run out.
			e.mu.Lock()
			e.longest = max(e.longest, time.Since(from))
			e.mu.Unlock()
		}
		sleepCtx(ctx, 2*ttl+time.Duration(rng.Int64N(int64(ttl))))
	}
}

func soakLength(quick bool, explicit time.Duration) time.Duration {
	switch {
	case explicit > 0:
		return explicit
	case quick:
		return 4 * time.Second
	default:
		return 5 * time.Minute
	}
}

// storeProbe tells the store's own outages apart from lockd's: it pings
// the store directly (past the proxies, so a cut between lockd and the
// store is not the store's silence) and records the stretches in which it
// did not answer, such as a lost quorum. An outage of lockd may last as
// long as the store's own silence in it, plus the same allowance a fault
// window gets (checkInputs.StoreSilent); it counts no further.
type storeProbe struct {
	b  interface{ Ping(context.Context) error }
	tl *timeline

	mu     sync.Mutex
	silent [][2]time.Time // [from, to): from the send of the first failed ping to the send of the next answered one
}

const (
	probeEvery   = 200 * time.Millisecond
	probeTimeout = time.Second
)

func (p *storeProbe) run(ctx context.Context) {
	var from time.Time
	for ctx.Err() == nil {
		sent := time.Now()
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		err := p.b.Ping(pctx)
		cancel()
		switch {
		case ctx.Err() != nil:
		case err != nil && from.IsZero():
			from = sent
			p.tl.add("the store itself does not answer a direct ping (%v)", short(err))
		case err == nil && !from.IsZero():
			p.mu.Lock()
			p.silent = append(p.silent, [2]time.Time{from, sent})
			p.mu.Unlock()
			p.tl.add("the store answers again after %s", sent.Sub(from).Round(10*time.Millisecond))
			from = time.Time{}
		}
		sleepCtx(ctx, probeEvery)
	}
	if !from.IsZero() {
		p.mu.Lock()
		p.silent = append(p.silent, [2]time.Time{from, time.Now()})
		p.mu.Unlock()
	}
}

// silentWithin is how long the store was silent between from and to.
func (p *storeProbe) silentWithin(from, to time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	var d time.Duration
	for _, s := range p.silent {
		a, b := s[0], s[1]
		if a.Before(from) {
			a = from
		}
		if b.After(to) {
			b = to
		}
		if b.After(a) {
			d += b.Sub(a)
		}
	}
	return d
}
