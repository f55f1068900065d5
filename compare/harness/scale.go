package harness

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// renewer is the part of lockd's API the scale scenario needs beyond
// acquire and release.
type renewer interface {
	Renew(ctx context.Context, l *Lease, ttl time.Duration) error
}

func (c contractLocker) Renew(ctx context.Context, l *Lease, ttl time.Duration) error {
	_, err := c.b.Renew(ctx, l.Key, l.ID, ttl)
	return err
}

func (g *guardedLocker) Renew(ctx context.Context, l *Lease, ttl time.Duration) error {
	if g.dead() {
		return errReplicaDead
	}
	return g.Locker.(renewer).Renew(ctx, l, ttl)
}

func (h *httpLocker) Renew(ctx context.Context, l *Lease, ttl time.Duration) error {
	resp, err := h.post(ctx, l.Key, "renew", map[string]any{"lease_id": l.ID, "ttl_ms": ttl.Milliseconds()})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return errorFrom(resp)
	}
	return nil
}

// ScaleCell: memory with many held leases being renewed, and with many
// clients long-polling one key.
type ScaleCell struct {
	What     string `json:"what"`
	Wanted   int    `json:"wanted"`
	Reached  int    `json:"reached"`
	Renewals int64  `json:"renewals,omitempty"`
	// SweepRequests: store requests lockd's backend sent during the
	// renewal sweep (roundtrips.go's counters), without sessions.
	SweepRequests int64 `json:"sweep_store_requests,omitempty"`
	SweepWrites   int64 `json:"sweep_store_writes,omitempty"`
	// SweepSeconds is how long the sweep ran; SweepCPU where its time
	// went, per renewal.
	SweepSeconds float64     `json:"sweep_seconds,omitempty"`
	SweepCPU     *CPUProfile `json:"sweep_cpu,omitempty"`
	// ProcessMB: Go heap + stacks in use in this process after a GC, minus
	// the same before the step: lockd and the clients it serves (and, for
	// etcd, the embedded server), all in one process.
	ProcessMB float64 `json:"process_go_mem_mb"`
	// PeakMB: the highest Go heap + stacks in use sampled during the step
	// (every 100 ms), before any GC forced for measuring.
	PeakMB float64 `json:"process_peak_mb"`
	// StoreRSSMB: resident memory of the store's server processes (sum over
	// members) after the step, and its growth during it.
	StoreRSSMB      float64 `json:"store_rss_mb,omitempty"`
	StoreRSSDeltaMB float64 `json:"store_rss_delta_mb,omitempty"`
	StoreRSSNote    string  `json:"store_rss_note,omitempty"`
	Note            string  `json:"note,omitempty"`
	Unmeasured      string  `json:"unmeasured,omitempty"`
}

// MemCap stops a scale step whose process memory passes it: the machine is
// shared, and a backend that needs more than this is a finding in itself.
const MemCap = 2 << 30

// memWatch samples the Go heap every 100 ms until stopped, keeps the peak,
// and closes over when the heap passes MemCap.
type memWatch struct {
	peak atomic.Uint64
	over chan struct{}
	stop chan struct{}
	done chan struct{}
}

func watchMem() *memWatch {
	w := &memWatch{over: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		tripped := false
		for {
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			used := ms.HeapInuse + ms.StackInuse
			if used > w.peak.Load() {
				w.peak.Store(used)
			}
			if used > MemCap && !tripped {
				tripped = true
				close(w.over)
			}
		}
	}()
	return w
}

func (w *memWatch) tripped() bool {
	select {
	case <-w.over:
		return true
	default:
		return false
	}
}

// end stops sampling and returns the peak in MB.
func (w *memWatch) end() float64 {
	close(w.stop)
	<-w.done
	return float64(w.peak.Load()) / (1 << 20)
}

func goMemMB() float64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return float64(ms.HeapInuse+ms.StackInuse) / (1 << 20)
}

func runScale(ctx context.Context, name, out string, d *deployment, sz Sizes, b *bar) ([]ScaleCell, []WaiterCell, *SessionCell) {
	leases := ScaleCell{What: "held leases, each renewed", Unmeasured: "not run"}
	rt := &rtCounter{}
	bk, err := d.newBackend(d.Addrs, rt)
	if err != nil {
		leases.Unmeasured = err.Error()
	} else if r, err := startLockd(bk); err != nil {
		bk.Close()
		leases.Unmeasured = err.Error()
	} else {
		start := time.Now()
		leases = scaleLeases(ctx, name, out, r, d, sz, rt, b.part(0, 4))
		r.stop()
		log.Printf("scale: leases step done at %s", time.Since(start).Round(time.Millisecond))
	}
	sessions := scaleSessions(ctx, d, sz.ScaleSessionLocks, sz.ScaleSessions, sz.ScaleBudget, b.part(1, 4))
	// The waiters: lockd in a process of its own, so that its memory is
	// not mixed with the clients'.
	one := scaleWaiters(ctx, name, out, d, WaitersOneKey, sz.ScaleWaiters, 1, sz.ScaleWaiterBudget, sz.IdleSamples, b.part(2, 4))
	spread := scaleWaiters(ctx, name, out, d, WaitersSpread, sz.ScaleSpread, sz.ScaleSpreadKeys, sz.ScaleWaiterBudget, sz.IdleSamples, b.part(3, 4))
	return []ScaleCell{leases}, []WaiterCell{one, spread}, &sessions
}

// scaleLeases acquires many keys, renews every lease once (a full renewal
// sweep), and measures memory.
// rt counts the requests lockd's backend sends to the store: the sweep's
// are SweepRequests.
func scaleLeases(ctx context.Context, name, out string, r *lockdReplica, d *deployment, sz Sizes, rt *rtCounter, progress func(float64)) ScaleCell {
	c := ScaleCell{What: "held leases, each renewed", Wanted: sz.ScaleLeases}
	const ttl = 10 * time.Minute
	const workers = 32
	mem0 := goMemMB()
	mw := watchMem()
	rss0, _ := storeRSS(d)
	deadline := time.Now().Add(sz.ScaleBudget)
	leases := make([]*Lease, sz.ScaleLeases)
	var next, reached atomic.Int64
	var firstErr atomic.Value
	prefix := fmt.Sprintf("compare-scale-%d-", time.Now().UnixNano())
	var wg sync.WaitGroup
	clients := make([]Locker, workers)
	for w := range clients {
		clients[w] = r.Locker()
	}
	defer func() {
		for _, l := range clients {
			l.Close()
		}
	}()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(l Locker) {
			defer wg.Done()
			for ctx.Err() == nil && time.Now().Before(deadline) && !mw.tripped() {
				i := next.Add(1) - 1
				if i >= int64(len(leases)) {
					return
				}
				lease, err := l.Acquire(ctx, prefix+strconv.FormatInt(i, 10), "scale", ttl, 0)
				if err != nil {
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				leases[i] = lease
				if n := reached.Add(1); n%256 == 0 {
					progress(0.5 * float64(n) / float64(len(leases)))
				}
			}
		}(clients[w])
	}
	wg.Wait()
	log.Printf("scale: %d leases acquired after %s", reached.Load(), time.Since(deadline.Add(-sz.ScaleBudget)).Round(time.Millisecond))
	c.Reached = int(reached.Load())
	// One renewal sweep over every held lease.
	rt0, w0 := rt.load(), rt.writes()
	var renewed atomic.Int64
	var idx atomic.Int64
	pids, pnote := storePIDs(d)
	sweep0 := time.Now()
	c.SweepCPU = profileCPU(pids, pnote, func() int64 {
		renewSweep(ctx, clients, leases, &idx, &renewed, &firstErr, func() bool {
			return ctx.Err() == nil && time.Now().Before(deadline.Add(sz.ScaleBudget/2)) && !mw.tripped()
		}, func(n int64) { progress(0.5 + 0.5*float64(n)/float64(max(c.Reached, 1))) })
		return renewed.Load()
	})
	c.SweepSeconds = time.Since(sweep0).Seconds()
	c.SweepCPU.save(out, name+"-leases-renewal-sweep")
	c.Renewals = renewed.Load()
	c.SweepRequests, c.SweepWrites = rt.load()-rt0, rt.writes()-w0
	c.PeakMB = mw.end()
	c.ProcessMB = goMemMB() - mem0
	if mw.tripped() {
		c.Note = fmt.Sprintf("stopped: process memory passed %d MB", MemCap>>20)
	}
	c.StoreRSSMB, c.StoreRSSNote = storeRSS(d)
	if rss0 > 0 && c.StoreRSSMB > 0 {
		c.StoreRSSDeltaMB = c.StoreRSSMB - rss0
	}
	if c.Reached < c.Wanted {
		c.Note = strings.TrimPrefix(c.Note+"; ", "; ") + fmt.Sprintf("reached %d of %d leases within the %s budget", c.Reached, c.Wanted, sz.ScaleBudget)
	}
	if s, ok := firstErr.Load().(string); ok {
		c.Note = strings.TrimSpace(c.Note + "; first error: " + s)
	}
	if c.Reached == 0 {
		c.Unmeasured = "no lease could be acquired: " + c.Note
	}
	// The leases are not released: that would take as long again. Scale
	// runs last, and the store is thrown away after it.
	return c
}

// renewSweep renews every held lease once, its workers taking the next
// index from idx while more() holds.
func renewSweep(ctx context.Context, clients []Locker, leases []*Lease, idx, renewed *atomic.Int64, firstErr *atomic.Value, more func() bool, progress func(n int64)) {
	var wg sync.WaitGroup
	for _, l := range clients {
		rn, ok := l.(renewer)
		if !ok {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for more() {
				i := idx.Add(1) - 1
				if i >= int64(len(leases)) {
					return
				}
				if leases[i] == nil {
					continue
				}
				if err := rn.Renew(ctx, leases[i], 10*time.Minute); err == nil {
					if n := renewed.Add(1); n%256 == 0 {
						progress(n)
					}
				} else {
					firstErr.CompareAndSwap(nil, "renew: "+err.Error())
				}
			}
		}()
	}
	wg.Wait()
}

// storeRSS sums the resident memory of the processes listening on the
// store's addresses. An in-process store (embedded etcd) has none.
func storeRSS(d *deployment) (float64, string) {
	if d.inProcess {
		return 0, "the store runs inside this process: its memory is in the process figure"
	}
	var total float64
	for _, a := range d.Addrs {
		pid, err := listenerPID(a)
		if err != nil {
			return 0, "store RSS not read: " + err.Error()
		}
		kb, err := vmRSS(pid)
		if err != nil {
			return 0, "store RSS not read: " + err.Error()
		}
		total += float64(kb) / 1024
	}
	return total, ""
}

// listenerPIDs caches listenerPID by address while that process lives.
var listenerPIDs sync.Map

// listenerPID finds the process listening on addr (127.0.0.1:port) from
// /proc/net/tcp and the processes' open sockets.
func listenerPID(addr string) (int, error) {
	// The first call of a step, before its load, finds the process; the
	// ones under load reuse it: with thousands of sockets open, reading
	// /proc/net/tcp and every process's fds took minutes (Redlock's scale
	// step took 5m48s, most of it here).
	if pid, ok := listenerPIDs.Load(addr); ok {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid.(int))); err == nil {
			return pid.(int), nil
		}
	}
	_, ps, _ := strings.Cut(addr, ":")
	port, err := strconv.Atoi(ps)
	if err != nil {
		return 0, err
	}
	var lines []string
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		if raw, err := os.ReadFile(f); err == nil {
			lines = append(lines, strings.Split(string(raw), "\n")[1:]...)
		}
	}
	var inode string
	for _, line := range lines {
		f := strings.Fields(line)
		if len(f) < 10 || f[3] != "0A" {
			continue
		}
		_, hexPort, _ := strings.Cut(f[1], ":")
		if p, err := strconv.ParseInt(hexPort, 16, 32); err == nil && int(p) == port {
			inode = f[9]
			break
		}
	}
	if inode == "" {
		return 0, fmt.Errorf("no listener on %s", addr)
	}
	target := "socket:[" + inode + "]"
	procs, _ := filepath.Glob("/proc/[0-9]*")
	self := strconv.Itoa(os.Getpid())
	for _, p := range procs {
		// Never this process: the store is not in it (storeRSS says so
		// for embedded etcd), and it holds thousands of sockets.
		if filepath.Base(p) == self {
			continue
		}
		fds, _ := os.ReadDir(p + "/fd")
		for _, fd := range fds {
			if l, err := os.Readlink(p + "/fd/" + fd.Name()); err == nil && l == target {
				pid, err := strconv.Atoi(filepath.Base(p))
				if err == nil {
					listenerPIDs.Store(addr, pid)
				}
				return pid, err
			}
		}
	}
	return 0, errors.New("listener's process not found")
}

func vmRSS(pid int) (int, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	return 0, errors.New("no VmRSS")
}
