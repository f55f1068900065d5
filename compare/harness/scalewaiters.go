package harness

import (
	"context"
	"fmt"
	"log"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// WaiterCell: lockd's own resident memory, in a process of its own, with
// many long polls waiting, and the store's beside it.
type WaiterCell struct {
	What string `json:"what"`
	// Polls, Keys and Conns are what the step asked for: polls spread
	// evenly over keys, each key held, through Conns HTTP/2 connections.
	Polls int `json:"polls"`
	Keys  int `json:"keys"`
	Conns int `json:"http2_connections"`
	// Reached: polls waiting when measured (launched minus failed);
	// StoreWaiters: the waiters the store counted on the keys (Inspect).
	Reached      int `json:"reached"`
	StoreWaiters int `json:"store_waiters"`
	// LockdRSSMB is the lockd process's VmRSS while they wait; LockdRSS0MB
	// the same before the first poll (the keys already held).
	LockdRSSMB  float64 `json:"lockd_rss_mb"`
	LockdRSS0MB float64 `json:"lockd_rss_before_mb"`
	PerWaiterKB float64 `json:"lockd_kb_per_waiter"`
	// Sockets open in the lockd process while they wait: client
	// connections and its connections to the store.
	Sockets int `json:"lockd_sockets"`
	// StoreRSSMB is the store's processes' resident memory while they wait,
	// StoreRSSDeltaMB its growth since before the first poll.
	StoreRSSMB       float64 `json:"store_rss_mb,omitempty"`
	StoreRSSDeltaMB  float64 `json:"store_rss_delta_mb,omitempty"`
	StorePerWaiterKB float64 `json:"store_kb_per_waiter,omitempty"`
	StoreRSSNote     string  `json:"store_rss_note,omitempty"`
	// IdleAcquire: single-try acquires of an idle key (its own HTTP/1.1
	// connection) while the polls wait.
	IdleAcquire *Percentiles `json:"idle_acquire,omitempty"`
	// Memory is lockd's own account of where its memory is while they
	// wait (its Go runtime, heap and goroutine profiles).
	Memory *MemProfile `json:"memory,omitempty"`
	// CPU is lockd's CPU while they wait, per second (the cycles are
	// seconds), taken during the idle-key acquires.
	CPU        *CPUProfile `json:"cpu_per_second,omitempty"`
	Note       string      `json:"note,omitempty"`
	Unmeasured string      `json:"unmeasured,omitempty"`
}

// The waiter steps' titles, which the report's targets find them by.
const (
	WaitersOneKey = "long polls on one held key, lockd in its own process"
	WaitersSpread = "long polls over many held keys, lockd in its own process"
)

// PollsPerConn is how many polls share one HTTP/2 connection: the issue's
// 50,000 polls through 50 connections.
const PollsPerConn = 1000

// scaleWaiters starts lockd as its own process over d's store, holds keys
// keys, parks polls long polls on them through HTTP/2 connections of
// PollsPerConn each, and measures lockd's and the store's memory and an
// idle key's acquire while they wait.
func scaleWaiters(ctx context.Context, name, out string, d *deployment, what string, polls, keys int, budget time.Duration, idleSamples int, progress func(float64)) WaiterCell {
	conns := max(1, (polls+PollsPerConn-1)/PollsPerConn)
	c := WaiterCell{What: what, Polls: polls, Keys: keys, Conns: conns}
	p, err := startLockdProc(name, d.Addrs)
	if err != nil {
		c.Unmeasured = "start lockd: " + err.Error()
		return c
	}
	defer p.stop()
	ib, err := d.newBackend(d.Addrs, nil)
	if err != nil {
		c.Unmeasured = "connect to the store: " + err.Error()
		return c
	}
	defer ib.Close()
	prefix := fmt.Sprintf("compare-waiters-%d-", time.Now().UnixNano())
	holder := newHTTPLocker(p.url)
	defer holder.Close()
	held := make([]*Lease, keys)
	for k := range held {
		l, err := holder.Acquire(ctx, prefix+strconv.Itoa(k), "holder", 10*time.Minute, 0)
		if err != nil {
			c.Unmeasured = "holder: " + err.Error()
			return c
		}
		held[k] = l
	}
	defer func() {
		for _, l := range held {
			if l != nil {
				_ = holder.Release(context.WithoutCancel(ctx), l)
			}
		}
	}()
	time.Sleep(500 * time.Millisecond)
	c.LockdRSS0MB, _ = p.rssMB()
	rss0, _ := storeRSS(d)
	mw := watchMem()
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-mw.over:
			cancel()
		case <-pctx.Done():
		}
	}()
	clients := make([]*httpLocker, conns)
	for i := range clients {
		clients[i] = newH2Locker(p.url)
	}
	defer func() {
		for _, l := range clients {
			l.Close()
		}
	}()
	var failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	deadline := time.Now().Add(budget)
	launched := 0
	for i := 0; i < polls && !mw.tripped() && ctx.Err() == nil && time.Now().Before(deadline); i++ {
		launched++
		l, key := clients[i%conns], prefix+strconv.Itoa(i%keys)
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := l.Acquire(pctx, key, "poller", time.Minute, 4*time.Minute)
			if err != nil && pctx.Err() == nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
			}
		}()
		if i%500 == 499 {
			progress(0.6 * float64(i) / float64(polls))
			time.Sleep(20 * time.Millisecond) // let the store keep up with the queue
		}
	}
	// Let every poll reach the store's queue before measuring.
	waiting := func() int {
		n := 0
		for k := 0; k < keys && ctx.Err() == nil; k++ {
			if st, err := ib.Inspect(ctx, prefix+strconv.Itoa(k)); err == nil {
				n += st.Waiters
			}
		}
		return n
	}
	for d.noFIFO == "" && time.Now().Before(deadline) && ctx.Err() == nil && !mw.tripped() {
		if c.StoreWaiters = waiting(); c.StoreWaiters >= launched-int(failed.Load()) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if d.noFIFO != "" {
		// No queue in the store to count (Redlock's waiters retry): give
		// them a moment to be under way.
		sleepCtx(ctx, 2*time.Second)
	}
	progress(0.7)
	c.Reached = launched - int(failed.Load())
	c.LockdRSSMB, err = p.rssMB()
	if err != nil {
		c.Unmeasured = "lockd RSS: " + err.Error()
	}
	c.Sockets = p.sockets()
	step := "waiters-one-key"
	if keys > 1 {
		step = "waiters-spread"
	}
	c.Memory = fetchMem(p.url, out, name+"-"+step)
	c.StoreRSSMB, c.StoreRSSNote = storeRSS(d)
	if rss0 > 0 && c.StoreRSSMB > 0 {
		c.StoreRSSDeltaMB = c.StoreRSSMB - rss0
		if c.Reached > 0 {
			c.StorePerWaiterKB = c.StoreRSSDeltaMB * 1024 / float64(c.Reached)
		}
	}
	if c.Reached > 0 {
		c.PerWaiterKB = (c.LockdRSSMB - c.LockdRSS0MB) * 1024 / float64(c.Reached)
	}
	// An idle key's acquire while they wait, and where lockd's CPU goes
	// meanwhile.
	pids, pnote := storePIDs(d)
	cpuDone := make(chan *CPUProfile, 1)
	go func() { cpuDone <- fetchCPU(p.url, out, name+"-"+step+"-idle", 5, pids, pnote) }()
	idle := newHTTPLocker(p.url)
	h := newHist()
	ikey := prefix + "idle"
	idleUntil := time.Now().Add(10 * time.Second)
	for i := 0; i < idleSamples && ctx.Err() == nil && !mw.tripped() && time.Now().Before(idleUntil); i++ {
		t0 := time.Now()
		l, err := idle.Acquire(ctx, ikey, "idle", 10*time.Second, 0)
		if err != nil {
			firstErr.CompareAndSwap(nil, "idle key: "+err.Error())
			continue
		}
		record(h, time.Since(t0))
		_ = idle.Release(ctx, l)
		progress(0.7 + 0.2*float64(i)/float64(idleSamples))
	}
	idle.Close()
	c.IdleAcquire = percentiles(h)
	c.CPU = <-cpuDone
	// The store may still be taking in the last polls: say so.
	var notes []string
	if launched < polls {
		notes = append(notes, fmt.Sprintf("launched %d of %d polls within the %s budget", launched, polls, budget))
	}
	if d.noFIFO != "" {
		notes = append(notes, "the store keeps no queue to count: "+d.noFIFO)
	} else if c.StoreWaiters < c.Reached {
		notes = append(notes, fmt.Sprintf("the store counted %d waiters of %d polls when measured", c.StoreWaiters, c.Reached))
	}
	if mw.tripped() {
		notes = append(notes, fmt.Sprintf("stopped: this process passed %d MB", MemCap>>20))
	}
	if s, ok := firstErr.Load().(string); ok {
		notes = append(notes, "first error: "+s)
	}
	c.Note = strings.Join(notes, "; ")
	log.Printf("scale: %s: %d polls, lockd %.0f MB (%.0f before), store %.0f MB", what, c.Reached, c.LockdRSSMB, c.LockdRSS0MB, c.StoreRSSMB)
	cancel()
	wg.Wait()
	progress(1)
	if c.Reached == 0 && c.Unmeasured == "" {
		c.Unmeasured = "no poll could be started: " + c.Note
	}
	return c
}
