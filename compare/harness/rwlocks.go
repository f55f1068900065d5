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

// The rwlocks scenario: a flood of readers on one read-write lock, each in
// a closed loop holding its read lock ~10 ms, and one writer arriving again
// and again. How long the writer waits is the starvation number: a fair
// lock (one queue for both modes) makes it the time the readers already
// inside take to finish, an unfair one lets it grow with the flood. Only
// lockd's is measured; no unfair lock is simulated beside it.

// rwDirect says, per column, which Go library on the store has a
// read-write lock to set beside lockd's.
var rwDirect = map[string]string{
	"etcd":     "not measured: only etcd's client/v3/experimental/recipes has an RWMutex, an experimental recipe outside the client's API (the recipe issue 14 cites: etcd#6408, #16221)",
	"etcd-ext": "not measured: only etcd's client/v3/experimental/recipes has an RWMutex, an experimental recipe outside the client's API (the recipe issue 14 cites: etcd#6408, #16221)",
	"zk":       "none: go-zookeeper has no read-write lock recipe",
	"redis":    "none: redsync has Mutex only, and go-redis no read-write lock",
	"redlock":  "none: redsync has Mutex only, and go-redis no read-write lock",
}

// RWLockPerf is the rwlocks scenario of one column.
type RWLockPerf struct {
	Via string `json:"via"`
	// Unsupported is why the backend keeps no read-write locks, as
	// /v1/capabilities says; nothing else is filled then.
	Unsupported string        `json:"unsupported,omitempty"`
	Unmeasured  string        `json:"unmeasured,omitempty"`
	Direct      string        `json:"direct_baseline"`
	Flood       []RWFloodCell `json:"reader_flood,omitempty"`
}

// RWFloodCell: Readers readers loop acquire read → hold HoldMs → release;
// one writer arrives, waits, holds 1 ms, releases, and after a pause
// arrives again.
type RWFloodCell struct {
	Readers int     `json:"readers"`
	HoldMs  float64 `json:"reader_hold_ms"`
	Writes  int64   `json:"writes"`
	// WriterWait is from the writer's acquire sent to its grant.
	WriterWait *Percentiles `json:"writer_wait,omitempty"`
	Reads      int64        `json:"reads"`
	ReadsPerS  float64      `json:"reads_per_s"`
	Errors     int64        `json:"errors"`
	// CutShortMs is how long the writer had waited when the run ended
	// with it still in line (0 when it was not).
	CutShortMs float64 `json:"writer_wait_cut_short_ms,omitempty"`
	Unmeasured string  `json:"unmeasured,omitempty"`
}

const rwFloodHold = 10 * time.Millisecond

func rwFloodSizes(cfg Config) []int {
	if cfg.Quick {
		return []int{4}
	}
	return []int{4, 16}
}

func runRWLocks(ctx context.Context, t target, d *deployment, cfg Config, b *bar) *RWLockPerf {
	res := &RWLockPerf{Via: ViaLockd(), Direct: rwDirect[t.Name]}
	r, why, err := primReplica(ctx, d, backend.FeatureRWLocks)
	switch {
	case err != nil:
		res.Unmeasured = err.Error()
		return res
	case why != "":
		res.Unsupported = why
		return res
	}
	defer r.stop()
	sizes := rwFloodSizes(cfg)
	for i, n := range sizes {
		c, err := measureRWFlood(ctx, func() primClient { return r.primClientOf(backend.FeatureRWLocks) }, n, rwFloodHold, cfg.Duration, b.part(i, len(sizes)))
		if err != nil {
			c.Unmeasured = err.Error()
		}
		res.Flood = append(res.Flood, c)
	}
	return res
}

// measureRWFlood runs readers readers in a closed loop, each holding its
// read lock for hold, and one writer that arrives, is timed until granted,
// holds 1 ms, releases and pauses 2×hold before it arrives again.
func measureRWFlood(ctx context.Context, newClient func() primClient, readers int, hold, d time.Duration, progress func(float64)) (RWFloodCell, error) {
	cell := RWFloodCell{Readers: readers, HoldMs: ms64(hold)}
	clients := make([]primClient, readers+1)
	for i := range clients {
		clients[i] = newClient()
	}
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	key := fmt.Sprintf("compare-rwflood-%d", rand.Uint32())
	runCtx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var reads, errs atomic.Int64
	var firstErr atomic.Value
	fail := func(err error) {
		errs.Add(1)
		firstErr.CompareAndSwap(nil, err.Error())
		sleepCtx(runCtx, 10*time.Millisecond)
	}
	// loop runs one client's acquire → hold → release until the run ends;
	// each reports its grants' waits to granted.
	var cutShort atomic.Int64
	loop := func(c int, mode string, hold, pause time.Duration, granted func(time.Duration)) {
		req := primReq{Key: key, Owner: fmt.Sprint(mode, "-", c), Mode: mode, TTL: 30 * time.Second, Wait: 30 * time.Second}
		for runCtx.Err() == nil {
			sent := time.Now()
			l, err := clients[c].acquire(runCtx, req)
			if err != nil {
				if runCtx.Err() == nil {
					fail(err)
				} else if mode == backend.ModeWrite {
					cutShort.Store(int64(time.Since(sent)))
				}
				continue
			}
			waited := time.Since(sent)
			time.Sleep(hold)
			rctx, rcancel := context.WithTimeout(context.WithoutCancel(runCtx), 10*time.Second)
			if err := clients[c].release(rctx, l); err != nil {
				fail(fmt.Errorf("release: %w", err))
			}
			rcancel()
			// A grant that came after the run's end was not inside it.
			if runCtx.Err() == nil {
				granted(waited)
			}
			sleepCtx(runCtx, pause)
		}
	}
	var wg sync.WaitGroup
	for c := 0; c < readers; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			loop(c, backend.ModeRead, hold, 0, func(time.Duration) { reads.Add(1) })
		}()
	}
	h := newHist()
	var writes atomic.Int64
	var hmu sync.Mutex
	start := time.Now()
	wg.Add(1)
	go func() {
		defer wg.Done()
		// The flood first: the writer arrives among readers already inside.
		sleepCtx(runCtx, 2*hold)
		loop(readers, backend.ModeWrite, time.Millisecond, 2*hold, func(w time.Duration) {
			hmu.Lock()
			record(h, w)
			hmu.Unlock()
			writes.Add(1)
			if progress != nil {
				progress(float64(time.Since(start)) / float64(d))
			}
		})
	}()
	wg.Wait()
	elapsed := time.Since(start)
	cell.Reads, cell.Writes, cell.Errors = reads.Load(), writes.Load(), errs.Load()
	cell.ReadsPerS = float64(cell.Reads) / elapsed.Seconds()
	cell.WriterWait = percentiles(h)
	cell.CutShortMs = ms64(time.Duration(cutShort.Load()))
	if cell.WriterWait == nil {
		if s, ok := firstErr.Load().(string); ok {
			return cell, errors.New(s)
		}
		return cell, fmt.Errorf("the writer was never granted in %s", d)
	}
	return cell, nil
}

func rwStatus(r *RWLockPerf) string {
	switch {
	case r.Unsupported != "":
		return "n/a (not supported: " + r.Unsupported + ")"
	case r.Unmeasured != "":
		return "not measured: " + r.Unmeasured
	}
	out := ""
	for _, c := range r.Flood {
		if c.WriterWait == nil {
			out += fmt.Sprintf("%d readers: not measured (%s); ", c.Readers, c.Unmeasured)
			continue
		}
		out += fmt.Sprintf("%d readers: writer wait p50 %.1f ms p99 %.1f ms max %.1f ms, %.0f reads/s; ", c.Readers,
			c.WriterWait.P50/1000, c.WriterWait.P99/1000, c.WriterWait.Max/1000, c.ReadsPerS)
	}
	return out
}

// rwRegister records who holds a read-write lock in which mode: a writer
// holding together with any other holder, both valid by their own
// deadlines, is an overlap.
type rwRegister struct {
	mu     sync.Mutex
	inside map[int]rwInside
	rwStats
}

type rwInside struct {
	mode     string
	deadline time.Time
}

type rwStats struct {
	overlaps, expired, writes, reads, shared int64
	first                                    string
}

func newRWRegister() *rwRegister { return &rwRegister{inside: map[int]rwInside{}} }

// hold notes that client holds in mode from now, and counts the overlaps
// with those holding already.
func (r *rwRegister) hold(client int, mode string, deadline, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if mode == backend.ModeWrite {
		r.writes++
	} else {
		r.reads++
	}
	shared := false
	for c, in := range r.inside {
		if c == client {
			continue
		}
		valid := now.Before(in.deadline) && now.Before(deadline)
		switch {
		case mode != backend.ModeWrite && in.mode != backend.ModeWrite:
			shared = shared || valid
		case valid:
			r.overlaps++
			if r.first == "" {
				r.first = fmt.Sprintf("client %d was granted %s mode while client %d held %s mode, both valid", client, mode, c, in.mode)
			}
		default:
			r.expired++
		}
	}
	if shared {
		r.shared++
	}
	r.inside[client] = rwInside{mode: mode, deadline: deadline}
}

// extend moves client's deadline after a renew.
func (r *rwRegister) extend(client int, deadline time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if in, ok := r.inside[client]; ok {
		in.deadline = deadline
		r.inside[client] = in
	}
}

func (r *rwRegister) leave(client int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.inside, client)
}

func (r *rwRegister) stats() rwStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rwStats
}
