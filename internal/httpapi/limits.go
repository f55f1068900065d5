package httpapi

import (
	"fmt"
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/lockd/lockd/internal/auth"
)

// Limits bound what callers can make one lockd replica hold. A zero field
// means no limit; cmd/lockd sets the defaults an operator sees. Every limit
// is counted by this replica alone: N replicas behind a balancer admit up to
// N times as much.
type Limits struct {
	// MaxWaiters bounds acquire long polls waiting at once.
	MaxWaiters int
	// MaxWaitersPerKey bounds long polls waiting at once on one key.
	MaxWaitersPerKey int
	// LeasesPerPrincipal bounds the leases one caller (token, certificate
	// or, without a tokens file, everyone) holds at once; a tokens file
	// entry's max_leases overrides it.
	LeasesPerPrincipal int
	// RatePerPrincipal bounds one caller's requests per second (bursts of
	// up to one second's worth); rate_per_sec in the tokens file
	// overrides it.
	RatePerPrincipal float64
	// MaxStreams bounds event streams open at once (key events and
	// election observers).
	MaxStreams int
	// MaxStreamsPerKey bounds event streams open at once on one lock key
	// or one election.
	MaxStreamsPerKey int
}

func tooMany(code, detail string, retryAfter time.Duration) error {
	return &requestError{status: http.StatusTooManyRequests, code: code, detail: detail, retryAfter: retryAfter}
}

// waitGate counts long polls, in all and per key.
type waitGate struct {
	mu     sync.Mutex
	total  int
	perKey map[string]int
}

// enter admits one more long poll on key, or says which limit it hits.
// leave must be called once the poll ends.
func (g *waitGate) enter(key string, l Limits) (leave func(), limit string, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if l.MaxWaiters > 0 && g.total >= l.MaxWaiters {
		return nil, "waiters", tooMany("too_many_waiters",
			fmt.Sprintf("this lockd already has %d acquire requests waiting; retry later or without wait_ms", l.MaxWaiters), time.Second)
	}
	if l.MaxWaitersPerKey > 0 && g.perKey[key] >= l.MaxWaitersPerKey {
		return nil, "waiters_per_key", tooMany("too_many_waiters",
			fmt.Sprintf("%d acquire requests already wait for this key on this lockd; retry later", l.MaxWaitersPerKey), time.Second)
	}
	return g.add(key), "", nil
}

// add counts one more on key, with g.mu held, and returns its leave.
func (g *waitGate) add(key string) func() {
	if g.perKey == nil {
		g.perKey = map[string]int{}
	}
	g.total++
	g.perKey[key]++
	return func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		g.total--
		if g.perKey[key]--; g.perKey[key] == 0 {
			delete(g.perKey, key)
		}
	}
}

// streamGate counts open event streams, in all and per key.
type streamGate struct{ g waitGate }

func (s *streamGate) enter(key string, l Limits) (leave func(), limit string, err error) {
	s.g.mu.Lock()
	defer s.g.mu.Unlock()
	if l.MaxStreams > 0 && s.g.total >= l.MaxStreams {
		return nil, "streams", tooMany("too_many_streams",
			fmt.Sprintf("this lockd already has %d event streams open; retry later", l.MaxStreams), time.Second)
	}
	if l.MaxStreamsPerKey > 0 && s.g.perKey[key] >= l.MaxStreamsPerKey {
		return nil, "streams_per_key", tooMany("too_many_streams",
			fmt.Sprintf("%d event streams are already open on this key on this lockd; retry later", l.MaxStreamsPerKey), time.Second)
	}
	return s.g.add(key), "", nil
}

// leaseBook counts, per principal with a lease limit, the leases granted
// or renewed through this replica that have not been released and whose
// deadline has not passed. A grant made in a session lives as long as the
// session, as renewed and closed through this replica. It holds lease ids
// only in memory and never shows them. A restarted replica counts a lease
// again at its next renew.
type leaseBook struct {
	mu       sync.Mutex
	by       map[string]*heldBy
	sessions map[string]time.Time // session hash → its deadline
}

type heldBy struct {
	leases  map[string]held // key + "\x00" + lease id → its deadline
	pending int             // acquires admitted and not yet answered
}

// held is a counted lease: its deadline, or its session's when session
// (the session's hash) is set and the book knows it.
type held struct {
	deadline time.Time
	session  string
}

// deadline is when h stops counting. A session's deadline only grows
// while it is renewed, so a lease whose session the book has forgotten
// (expired) falls back to the deadline it was granted with, which is no
// later.
func (b *leaseBook) deadline(h held) time.Time {
	if d, ok := b.sessions[h.session]; ok && h.session != "" {
		return d
	}
	return h.deadline
}

func leaseRef(key, id string) string { return key + "\x00" + id }

func (b *leaseBook) entry(name string) *heldBy {
	if b.by == nil {
		b.by = map[string]*heldBy{}
	}
	h := b.by[name]
	if h == nil {
		h = &heldBy{leases: map[string]held{}}
		b.by[name] = h
	}
	return h
}

// reserve admits one acquire for p when it holds fewer than max leases.
// The caller ends the reservation with granted or abandoned.
func (b *leaseBook) reserve(p string, max int, now time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.entry(p)
	if len(h.leases)+h.pending >= max {
		for ref, l := range h.leases {
			if !b.deadline(l).After(now) {
				delete(h.leases, ref)
			}
		}
		b.forgetSessions(now)
	}
	if len(h.leases)+h.pending >= max {
		return tooMany("too_many_leases",
			fmt.Sprintf("this caller already holds %d leases (its limit); release one or let one expire", max), time.Second)
	}
	h.pending++
	return nil
}

func (b *leaseBook) abandoned(p string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.entry(p).pending--
	b.forgetIdle(p)
}

// granted counts a grant; session is its session's hash ("" for none).
func (b *leaseBook) granted(p, key, id string, deadline time.Time, session string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	h := b.entry(p)
	h.pending--
	h.leases[leaseRef(key, id)] = held{deadline: deadline, session: session}
	if session != "" {
		if b.sessions == nil {
			b.sessions = map[string]time.Time{}
		}
		if deadline.After(b.sessions[session]) {
			b.sessions[session] = deadline
		}
	}
}

// renewed notes a lease's new deadline; a renew is never refused for the
// limit (refusing it would lose a lock the caller holds).
func (b *leaseBook) renewed(p, key, id string, deadline time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.entry(p).leases[leaseRef(key, id)] = held{deadline: deadline}
}

// sessionRenewed moves a known session's deadline, and with it its grants'.
func (b *leaseBook) sessionRenewed(session string, deadline time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.sessions[session]; ok {
		b.sessions[session] = deadline
	}
}

// sessionClosed stops counting a closed session's grants.
func (b *leaseBook) sessionClosed(session string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.sessions[session]; !ok {
		return
	}
	for p, h := range b.by {
		for ref, l := range h.leases {
			if l.session == session {
				delete(h.leases, ref)
			}
		}
		b.forgetIdle(p)
	}
	delete(b.sessions, session)
}

// forgetSessions drops sessions whose deadline has passed (their grants
// fall back to their own, earlier deadlines).
func (b *leaseBook) forgetSessions(now time.Time) {
	for ref, d := range b.sessions {
		if !d.After(now) {
			delete(b.sessions, ref)
		}
	}
}

func (b *leaseBook) released(p, key, id string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if h := b.by[p]; h != nil {
		delete(h.leases, leaseRef(key, id))
		b.forgetIdle(p)
	}
}

func (b *leaseBook) forgetIdle(p string) {
	if h := b.by[p]; h != nil && h.pending == 0 && len(h.leases) == 0 {
		delete(b.by, p)
	}
}

// rateBook keeps one token bucket per principal.
type rateBook struct {
	mu sync.Mutex
	by map[string]*rate.Limiter
}

// wait reports how long p must wait before its next request is admitted
// (zero: admitted now, and counted).
func (b *rateBook) wait(p string, perSec float64, now time.Time) time.Duration {
	b.mu.Lock()
	lim := b.by[p]
	if lim == nil || float64(lim.Limit()) != perSec {
		// New, or the tokens file changed its rate.
		if b.by == nil {
			b.by = map[string]*rate.Limiter{}
		}
		lim = rate.NewLimiter(rate.Limit(perSec), int(math.Max(1, math.Ceil(perSec))))
		b.by[p] = lim
	}
	b.mu.Unlock()
	r := lim.ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d
	}
	return 0
}

// retryAfter is a Retry-After header value: whole seconds, at least one.
func retryAfter(d time.Duration) string {
	return strconv.Itoa(int(math.Max(1, math.Ceil(d.Seconds()))))
}

// leaseLimit is the lease limit in force for p (0: none).
func (s *Server) leaseLimit(p *auth.Principal) int {
	if p.MaxLeases > 0 {
		return p.MaxLeases
	}
	return s.opts.Limits.LeasesPerPrincipal
}

// limitRate refuses a caller over its request rate with 429 rate_limited
// and a Retry-After.
func (s *Server) limitRate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" {
			next.ServeHTTP(w, r) // probes are not a caller's budget
			return
		}
		p := principal(r)
		perSec := p.Rate
		if perSec <= 0 {
			perSec = s.opts.Limits.RatePerPrincipal
		}
		if perSec > 0 {
			if d := s.rates.wait(p.Name, perSec, time.Now()); d > 0 {
				s.m.limited.WithLabelValues("rate").Inc()
				s.refuse(w, r, p, tooMany("rate_limited",
					fmt.Sprintf("this caller is limited to %g requests per second", perSec), d))
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// LimitListener accepts at most max connections open at once; one more is
// accepted and closed at once, so that a flood of connections cannot take
// every file descriptor while the listen queue still drains. max ≤ 0 means
// no limit.
func (m *Metrics) LimitListener(ln net.Listener, max int) net.Listener {
	return &limitListener{Listener: ln, max: int64(max), m: m}
}

type limitListener struct {
	net.Listener
	max  int64
	open atomic.Int64
	m    *Metrics
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if n := l.open.Add(1); l.max > 0 && n > l.max {
			l.open.Add(-1)
			l.m.limited.WithLabelValues("connections").Inc()
			_ = c.Close()
			continue
		}
		l.m.conns.Inc()
		l.m.accepted.Inc()
		return &countedConn{Conn: c, l: l}, nil
	}
}

type countedConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.open.Add(-1)
		c.l.m.conns.Dec()
	})
	return err
}
