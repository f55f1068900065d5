package harness

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lockd/lockd/backend"
)

// SessionCell: many locks held in few sessions (backend.Sessions), and
// what one renewal round costs the store: every session renewed once.
type SessionCell struct {
	Locks    int `json:"locks"`
	Sessions int `json:"sessions"`
	// Reached: locks held in their sessions when the round ran.
	Reached int `json:"reached"`
	// RoundRequests are the store requests lockd's backend sent during the
	// round, counted inside the real client (roundtrips.go): every write
	// and any read, so an upper bound on the round's writes.
	RoundRequests int64 `json:"round_store_requests"`
	// RoundWrites: those of them that write (storewrites.go).
	RoundWrites int64 `json:"round_store_writes"`
	// IdleWrites: writes the backend sent on its own over an idle span as
	// long as the round, right after it: its background traffic.
	IdleWrites   int64   `json:"idle_store_writes"`
	RoundSeconds float64 `json:"round_seconds"`
	Counted      string  `json:"counted_by"`
	Note         string  `json:"note,omitempty"`
	Unmeasured   string  `json:"unmeasured,omitempty"`
}

// scaleSessions opens sessions, acquires locks spread over them through
// the backend contract in process (HTTP's cost is not what this counts),
// then renews every session once and counts the store requests.
func scaleSessions(ctx context.Context, d *deployment, locks, sessions int, budget time.Duration, progress func(float64)) SessionCell {
	c := SessionCell{Locks: locks, Sessions: sessions, Counted: d.rtHow}
	rt := &rtCounter{}
	b, err := d.newBackend(d.Addrs, rt)
	if err != nil {
		c.Unmeasured = "connect to the store: " + err.Error()
		return c
	}
	defer b.Close()
	sr, ok := b.(backend.Sessioner)
	if !ok || sr.Sessions() == nil {
		c.Unmeasured = "this backend keeps no sessions"
		if u, ok := b.(backend.Unsupported); ok && u.Unsupported()[backend.FeatureSessions] != "" {
			c.Unmeasured += ": " + u.Unsupported()[backend.FeatureSessions]
		}
		return c
	}
	ss := sr.Sessions()
	const ttl = 10 * time.Minute
	ids := make([]string, sessions)
	for i := range ids {
		s, err := ss.Open(ctx, "scale", ttl)
		if err != nil {
			c.Unmeasured = "open a session: " + err.Error()
			return c
		}
		ids[i] = s.ID
	}
	prefix := fmt.Sprintf("compare-sessions-%d-", time.Now().UnixNano())
	deadline := time.Now().Add(budget)
	var next, held atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && time.Now().Before(deadline) {
				i := next.Add(1) - 1
				if i >= int64(locks) {
					return
				}
				_, err := b.Acquire(ctx, backend.AcquireRequest{Key: prefix + strconv.FormatInt(i, 10), Owner: "scale", Session: ids[i%int64(sessions)]})
				if err != nil {
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				if n := held.Add(1); n%256 == 0 {
					progress(0.8 * float64(n) / float64(locks))
				}
			}
		}()
	}
	wg.Wait()
	c.Reached = int(held.Load())
	if c.Reached < locks {
		c.Note = fmt.Sprintf("held %d of %d locks within the %s budget", c.Reached, locks, budget)
	}
	// One renewal round: every session once, one after another, so that
	// nothing else this backend sends is in the count but its own
	// background traffic (keep-alives, pings), which the round's few
	// seconds keep small.
	before, wbefore := rt.load(), rt.writes()
	t0 := time.Now()
	for i, id := range ids {
		if _, err := ss.Renew(ctx, id, 0); err != nil {
			firstErr.CompareAndSwap(nil, "renew session: "+err.Error())
		}
		progress(0.8 + 0.2*float64(i)/float64(sessions))
	}
	c.RoundSeconds = time.Since(t0).Seconds()
	c.RoundRequests, c.RoundWrites = rt.load()-before, rt.writes()-wbefore
	// The backend's own background writes over an idle span as long as
	// the round (clock heartbeats, pings), to tell them from the round's.
	idle0 := rt.writes()
	sleepCtx(ctx, time.Since(t0))
	c.IdleWrites = rt.writes() - idle0
	if s, ok := firstErr.Load().(string); ok {
		c.Note = joinNote(c.Note, "first error: "+s)
	}
	if c.Reached == 0 {
		c.Unmeasured = "no lock could be held in a session: " + c.Note
	}
	// The sessions are left to expire: the store is thrown away after
	// the scale scenario, and closing 1,000 sessions' grants would take
	// as long as making them.
	return c
}

func joinNote(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}
