package harness

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/lockd/lockd/backend"
)

// The semaphores scenario: closed-loop throughput of one semaphore with N
// permits and 2N clients, and the handoff of a permit to the head of the
// line, over lockd on every backend that keeps semaphores.

// semDirect says, per column, which Go library on the store has a
// semaphore to set beside lockd's: none has.
var semDirect = map[string]string{
	"etcd":     "none: etcd's client/v3/concurrency has Mutex and Election, no semaphore",
	"etcd-ext": "none: etcd's client/v3/concurrency has Mutex and Election, no semaphore",
	"zk":       "none: go-zookeeper has zk.Lock only, no semaphore recipe",
	"redis":    "none: redsync has Mutex only, and go-redis no semaphore",
	"redlock":  "none: redsync has Mutex only, and go-redis no semaphore",
}

// SemaphorePerf is the semaphores scenario of one column.
type SemaphorePerf struct {
	Via string `json:"via"`
	// Unsupported is why the backend keeps no semaphores, as
	// /v1/capabilities says; nothing else is filled then.
	Unsupported string `json:"unsupported,omitempty"`
	Unmeasured  string `json:"unmeasured,omitempty"`
	// Direct names the Go library with a semaphore on this store that
	// lockd is compared with, or says that there is none.
	Direct     string              `json:"direct_baseline"`
	Throughput []SemThroughputCell `json:"throughput,omitempty"`
	Handoff    *SemHandoffCell     `json:"handoff,omitempty"`
}

// SemThroughputCell: 2N clients loop acquire (waiting) → release on one
// semaphore of N permits.
type SemThroughputCell struct {
	Permits    int     `json:"permits"`
	Clients    int     `json:"clients"`
	Grants     int64   `json:"grants"`
	Errors     int64   `json:"errors"`
	PerSec     float64 `json:"grants_per_s"`
	Unmeasured string  `json:"unmeasured,omitempty"`
}

// SemHandoffCell: every permit held and Waiters in line; one permit is
// released, and the head of the line is granted.
type SemHandoffCell struct {
	Permits  int          `json:"permits"`
	Waiters  int          `json:"waiters"`
	Handoffs int64        `json:"handoffs"`
	Lat      *Percentiles `json:"handoff_latency,omitempty"`
	// PassedOver: handoffs in which another waiter than the head was
	// granted.
	PassedOver int64  `json:"head_passed_over"`
	Unmeasured string `json:"unmeasured,omitempty"`
}

// semLocker presents one semaphore size as a Locker, so measureThroughput
// drives it as it drives locks.
type semLocker struct {
	c       primClient
	permits int
	mu      sync.Mutex
	held    map[*Lease]*primLease
}

func newSemLocker(c primClient, permits int) *semLocker {
	return &semLocker{c: c, permits: permits, held: map[*Lease]*primLease{}}
}

func (s *semLocker) Acquire(ctx context.Context, key, owner string, ttl, wait time.Duration) (*Lease, error) {
	p, err := s.c.acquire(ctx, primReq{Key: key, Owner: owner, Permits: s.permits, TTL: ttl, Wait: wait})
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.held[&p.Lease] = p
	s.mu.Unlock()
	return &p.Lease, nil
}

func (s *semLocker) Release(ctx context.Context, l *Lease) error {
	s.mu.Lock()
	p := s.held[l]
	delete(s.held, l)
	s.mu.Unlock()
	return s.c.release(ctx, p)
}

func (s *semLocker) Close() error { return s.c.Close() }

// semSizes are the permits of the throughput rows and how long each cell
// runs.
func semSizes(cfg Config) (permits []int, cell time.Duration) {
	if cfg.Quick {
		return []int{1, 4}, 500 * time.Millisecond
	}
	return []int{1, 4, 16}, max(cfg.Duration/4, 1500*time.Millisecond)
}

// The handoff row's sizes: a semaphore of semHandoffPermits, every permit
// held, semHandoffWaiters in line.
const (
	semHandoffPermits = 4
	semHandoffWaiters = 2
)

func runSemaphores(ctx context.Context, t target, d *deployment, cfg Config, b *bar) *SemaphorePerf {
	res := &SemaphorePerf{Via: ViaLockd(), Direct: semDirect[t.Name]}
	r, why, err := primReplica(ctx, d, backend.FeatureSemaphores)
	switch {
	case err != nil:
		res.Unmeasured = err.Error()
		return res
	case why != "":
		res.Unsupported = why
		return res
	}
	defer r.stop()
	permits, cell := semSizes(cfg)
	steps := len(permits) + 1
	for i, n := range permits {
		tr, err := measureThroughput(ctx, func() (Locker, error) {
			return newSemLocker(r.primClientOf(backend.FeatureSemaphores), n), nil
		}, 2*n, 1, cell, b.part(i, steps))
		c := SemThroughputCell{Permits: n, Clients: 2 * n, Grants: tr.Grants, Errors: tr.Errors}
		if err != nil {
			c.Unmeasured = err.Error()
		} else {
			c.PerSec = float64(tr.Grants) / tr.Elapsed.Seconds()
		}
		res.Throughput = append(res.Throughput, c)
	}
	h, err := measureSemHandoff(ctx, func() primClient { return r.primClientOf(backend.FeatureSemaphores) },
		semHandoffPermits, semHandoffWaiters, cfg.Duration, b.part(steps-1, steps))
	if err != nil {
		h.Unmeasured = err.Error()
	}
	res.Handoff = &h
	return res
}

// semResult is one acquire of the handoff measurement, as it returned.
type semResult struct {
	client int
	p      *primLease
	err    error
	at     time.Time
}

// measureSemHandoff: a semaphore of permits, every permit held, waiters
// clients in line behind it (each seen queued by inspection before the
// next one asks). Round after round the oldest holder releases and the
// time from its release's send to the head waiter's grant is recorded;
// the releaser then joins the back of the line.
func measureSemHandoff(ctx context.Context, newClient func() primClient, permits, waiters int, d time.Duration, progress func(float64)) (cell SemHandoffCell, err error) {
	cell = SemHandoffCell{Permits: permits, Waiters: waiters}
	n := permits + waiters
	clients := make([]primClient, n)
	for i := range clients {
		clients[i] = newClient()
	}
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	type held struct {
		client int
		p      *primLease
	}
	var holders []held
	results := make(chan semResult, n)
	defer func() {
		cancel()
		wg.Wait()
		close(results)
		for r := range results {
			if r.err == nil {
				holders = append(holders, held{r.client, r.p})
			}
		}
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		for _, h := range holders {
			_ = clients[h.client].release(rctx, h.p)
		}
		rcancel()
		for _, c := range clients {
			c.Close()
		}
	}()
	key := fmt.Sprintf("compare-semhandoff-%d", rand.Uint32())
	req := func(c int) primReq {
		return primReq{Key: key, Owner: fmt.Sprint("client-", c), Permits: permits, TTL: 30 * time.Second, Wait: 30 * time.Second}
	}
	for c := 0; c < permits; c++ {
		p, err := clients[c].acquire(runCtx, req(c))
		if err != nil {
			return cell, fmt.Errorf("fill permit %d: %w", c, err)
		}
		holders = append(holders, held{c, p})
	}
	var line []int // waiting clients, head first
	join := func(c int) error {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := clients[c].acquire(runCtx, req(c))
			results <- semResult{client: c, p: p, err: err, at: time.Now()}
		}()
		line = append(line, c)
		// Seen in line by the semaphore before anyone else asks: the line's
		// order is then the order of arrival.
		for deadline := time.Now().Add(10 * time.Second); ; {
			w, err := clients[c].waiters(runCtx, key)
			if err != nil {
				return fmt.Errorf("inspect: %w", err)
			}
			if w >= len(line) {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%d waiters seen after 10 s, want %d", w, len(line))
			}
			sleepCtx(runCtx, time.Millisecond)
		}
	}
	for c := permits; c < n; c++ {
		if err := join(c); err != nil {
			return cell, err
		}
	}
	h := newHist()
	defer func() { cell.Lat = percentiles(h) }()
	start := time.Now()
	for time.Since(start) < d && ctx.Err() == nil {
		out := holders[0]
		holders = holders[1:]
		sent := time.Now()
		if err := clients[out.client].release(runCtx, out.p); err != nil {
			return cell, fmt.Errorf("release: %w", err)
		}
		var got semResult
		select {
		case got = <-results:
		case <-time.After(10 * time.Second):
			return cell, errors.New("no waiter granted within 10 s of a release")
		}
		if got.err != nil {
			return cell, fmt.Errorf("waiter: %w", got.err)
		}
		record(h, got.at.Sub(sent))
		cell.Handoffs++
		if got.client != line[0] {
			cell.PassedOver++
		}
		for i, c := range line {
			if c == got.client {
				line = append(line[:i], line[i+1:]...)
				break
			}
		}
		holders = append(holders, held{got.client, got.p})
		if err := join(out.client); err != nil {
			return cell, err
		}
		if progress != nil {
			progress(float64(time.Since(start)) / float64(d))
		}
	}
	return cell, nil
}

func semaphoreStatus(s *SemaphorePerf) string {
	switch {
	case s.Unsupported != "":
		return "n/a (not supported: " + s.Unsupported + ")"
	case s.Unmeasured != "":
		return "not measured: " + s.Unmeasured
	}
	out := ""
	for _, c := range s.Throughput {
		if c.Unmeasured != "" {
			out += fmt.Sprintf("N=%d not measured (%s); ", c.Permits, c.Unmeasured)
			continue
		}
		out += fmt.Sprintf("N=%d %.0f grants/s; ", c.Permits, c.PerSec)
	}
	if h := s.Handoff; h != nil && h.Lat != nil {
		out += fmt.Sprintf("handoff p50 %.0f µs p99 %.0f µs, head passed over %d", h.Lat.P50, h.Lat.P99, h.PassedOver)
	} else if h != nil {
		out += "handoff not measured: " + h.Unmeasured
	}
	return out
}

// semRegister is the resource of the semaphore workload: a fenced register
// per slot, each refusing a token lower than the highest it has taken, and
// a record of who is inside with which permit.
type semRegister struct {
	permits int

	mu      sync.Mutex
	inside  map[int]semInside // client → its permit, while held
	highest map[int]uint64    // slot → highest token taken
	semStats
}

type semInside struct {
	slot     int
	token    uint64
	deadline time.Time
}

type semStats struct {
	overN, regressions, writes, refused int64
	most                                int
	firstOverN, firstRegression         string
}

func newSemRegister(permits int) *semRegister {
	return &semRegister{permits: permits, inside: map[int]semInside{}, highest: map[int]uint64{}}
}

// hold notes that client holds a permit from now: more than permits valid
// permits held at once (the newcomer's included) is a violation.
func (r *semRegister) hold(client, slot int, token uint64, deadline, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.inside[client] = semInside{slot: slot, token: token, deadline: deadline}
	live := 0
	var who []string
	for c, in := range r.inside {
		if now.Before(in.deadline) {
			live++
			who = append(who, fmt.Sprintf("client %d slot %d token %d", c, in.slot, in.token))
		}
	}
	r.most = max(r.most, live)
	if live > r.permits && now.Before(deadline) {
		r.overN++
		if r.firstOverN == "" {
			r.firstOverN = fmt.Sprintf("%d valid permits held at once: %v", live, who)
		}
	}
}

// write is client's write to its slot's register: refused below the
// slot's highest token; a lower token within the writer's own lease is a
// regression of the slot's tokens.
func (r *semRegister) write(client, slot int, token uint64, deadline, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	hi := r.highest[slot]
	if token < hi {
		r.refused++
		if now.Before(deadline) {
			r.regressions++
			if r.firstRegression == "" {
				r.firstRegression = fmt.Sprintf("client %d wrote slot %d with token %d, %s before its deadline, after the slot had taken token %d",
					client, slot, token, deadline.Sub(now).Round(time.Millisecond), hi)
			}
		}
		return
	}
	r.highest[slot] = token
	r.writes++
}

// extend moves client's deadline after a renew.
func (r *semRegister) extend(client int, deadline time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if in, ok := r.inside[client]; ok {
		in.deadline = deadline
		r.inside[client] = in
	}
}

func (r *semRegister) leave(client int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.inside, client)
}

func (r *semRegister) stats() semStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.semStats
}
