// Package httpapi serves lockd's v1 HTTP/JSON API over a backend.Backend:
// routing, strict request decoding, problem+json errors, long-poll waits and
// metrics. It keeps no lock state of its own, and it must never release a
// lock it was not asked to release: a stopping lockd leaves leases running.
package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/auth"
	"github.com/lockd/lockd/internal/lease"
	"github.com/lockd/lockd/internal/version"
)

// Options configures a Server. The zero value works.
type Options struct {
	// Backend names the store in metrics and logs; default "unknown".
	Backend string
	// Metrics, when nil, are made by New.
	Metrics *Metrics
	// Logger; default slog.Default().
	Logger *slog.Logger
	// Auth, when set, requires every call but /healthz and /readyz to
	// authenticate and checks its rights on the key; nil lets everyone do
	// everything (lockd says so loudly at start).
	Auth *auth.Store
	// Audit, when set, gets one line per grant, release, renew failure,
	// expiry noticed and refused request.
	Audit *slog.Logger
	// Limits bound waiters, leases and request rates; the zero value
	// limits nothing.
	Limits Limits
	// BodyTimeout bounds the time to read a request's body, so that a
	// client sending it slowly cannot hold a handler; default 30s. (The
	// http.Server's ReadTimeout cannot do this: its deadline would also
	// end long polls.)
	BodyTimeout time.Duration
	// Clock is the clock policy the backend was given; WatchClock holds
	// this replica's measured offset against its MaxSkew.
	Clock lease.Clock
	// StreamPing is how often an event stream sends a ": ping" comment;
	// default 15 s.
	StreamPing time.Duration
	// LockDelay is the lock-delay of an acquire that does not ask for one
	// (lock_delay_ms), on the primitives the backend delays; 0..
	// backend.MaxLockDelay.
	LockDelay time.Duration
}

// Server is the HTTP handler of lockd.
type Server struct {
	b       backend.Backend
	opts    Options
	m       *Metrics
	log     *slog.Logger
	handler http.Handler

	waiters waitGate
	streams streamGate
	leases  leaseBook
	rates   rateBook

	clock  clockWatch
	routes routeCache

	stopOnce sync.Once
	stopping chan struct{} // closed by Stopping: long polls end with shutting_down
}

// New returns the API over b.
func New(b backend.Backend, opts Options) *Server {
	if opts.Backend == "" {
		opts.Backend = "unknown"
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics()
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.BodyTimeout <= 0 {
		opts.BodyTimeout = 30 * time.Second
	}
	s := &Server{b: b, opts: opts, m: opts.Metrics, log: opts.Logger, stopping: make(chan struct{})}
	if b != nil {
		s.m.held.use(b)
	}
	r := chi.NewRouter()
	r.Use(s.recoverer, s.observe, s.authenticate, s.limitRate)
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, problemFor(&requestError{status: http.StatusNotFound, code: "not_found", detail: "no such route: " + r.URL.Path}))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, problemFor(&requestError{status: http.StatusMethodNotAllowed, code: "method_not_allowed", detail: r.Method + " is not allowed on " + r.URL.Path}))
	})
	r.Get("/healthz", s.healthz)
	r.Get("/readyz", s.readyz)
	// Load balancers and monitors probe with HEAD.
	r.Head("/healthz", s.healthz)
	r.Head("/readyz", s.readyz)
	metrics := promhttp.HandlerFor(s.m.reg, promhttp.HandlerOpts{})
	r.Get("/metrics", func(w http.ResponseWriter, r *http.Request) {
		if s.allow(w, r, auth.RightAdmin, "") {
			metrics.ServeHTTP(w, r)
		}
	})
	r.Get("/v1/capabilities", s.capabilities)
	r.Route("/v1/locks", func(r chi.Router) {
		r.Get("/", s.list)
		r.Get("/{key}", s.inspect)
		r.Post("/{key}/acquire", s.acquire)
		r.Post("/{key}/renew", s.renew)
		r.Post("/{key}/release", s.release)
		r.Get("/{key}/events", s.lockEvents)
	})
	r.Route("/v1/elections", s.electionRoutes)
	r.Route("/v1/sessions", s.sessionRoutes)
	r.Route("/v1/semaphores", s.semaphoreRoutes)
	r.Route("/v1/rwlocks", s.rwlockRoutes)
	s.handler = r
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

// Stopping ends every long poll with a shutting_down problem; call it before
// http.Server.Shutdown so that waiters do not hold the shutdown up. Requests
// that do not wait run to completion.
func (s *Server) Stopping() { s.stopOnce.Do(func() { close(s.stopping) }) }

// statusClientClosed is how a request whose client left before its answer
// is counted (nginx's "client closed request"). It is never sent: there is
// nobody to send it to.
const statusClientClosed = 499

// clientGone reports whether r's client has left (its connection closed or
// its stream was cancelled): whatever failed after that, it is not lockd's
// failure, and nothing written can reach the client.
func clientGone(r *http.Request) bool { return r.Context().Err() != nil }

// fail writes err as a problem and logs what the client cannot fix. When
// the client has left, it writes nothing (observe counts 499) and logs the
// error only at debug level.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	// A refused request is answered even when its context has ended: a
	// body that stopped arriving ends it too (net/http cancels a request
	// whose connection read failed), and that client waits for its 408.
	var refused *requestError
	if clientGone(r) && !errors.As(err, &refused) {
		s.log.Debug("client left before the answer", "method", r.Method, "path", r.URL.Path, "err", err)
		return
	}
	p := problemFor(err)
	if p.Status >= 500 {
		s.log.Warn("request failed", "method", r.Method, "path", r.URL.Path, "code", p.Code, "err", err)
	}
	writeProblem(w, p)
}

func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("panic serving request", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(v))
				writeProblem(w, problemFor(errors.New("panic")))
			}
		}()
		next.ServeHTTP(w, r)
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// observe records each request's latency by route and status, and logs it
// at debug level (never with its body: lease ids are capabilities).
func (s *Server) observe(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		route := s.routes.pattern(chi.RouteContext(r.Context()))
		if route == "" {
			route = "unmatched"
		}
		if sw.status == 0 {
			sw.status = http.StatusOK
			if clientGone(r) { // nothing was written: the client left first
				sw.status = statusClientClosed
			}
		}
		took := time.Since(start)
		s.m.requests.WithLabelValues(route, r.Method, statusLabel(sw.status)).Observe(took.Seconds())
		if s.log.Enabled(r.Context(), slog.LevelDebug) { // its attributes cost allocations
			s.log.Debug("request", "method", r.Method, "route", route, "key", chi.URLParam(r, "key"), "status", sw.status, "took", took)
		}
	})
}

// routeCache keeps each route's pattern: chi builds it anew for every
// request from its parts, at a few allocations each time. The keys are the
// router's own patterns, so the cache holds one entry per route.
type routeCache struct {
	mu sync.RWMutex
	m  map[[3]string]string
}

func (c *routeCache) pattern(rc *chi.Context) string {
	if rc == nil || len(rc.RoutePatterns) > 3 {
		return rc.RoutePattern()
	}
	var parts [3]string
	copy(parts[:], rc.RoutePatterns)
	c.mu.RLock()
	p, ok := c.m[parts]
	c.mu.RUnlock()
	if ok {
		return p
	}
	p = rc.RoutePattern()
	c.mu.Lock()
	if c.m == nil {
		c.m = map[[3]string]string{}
	}
	c.m[parts] = p
	c.mu.Unlock()
	return p
}

// statusLabels are the status codes as metric labels, made once.
var statusLabels = func() (l [600]string) {
	for i := range l {
		l[i] = strconv.Itoa(i)
	}
	return l
}()

func statusLabel(code int) string {
	if code >= 0 && code < len(statusLabels) {
		return statusLabels[code]
	}
	return strconv.Itoa(code)
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "version": version.Get().Version})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	if err := s.b.Ping(ctx); err != nil {
		if !errors.Is(err, backend.ErrUnavailable) {
			err = fmt.Errorf("%w: %v", backend.ErrUnavailable, err)
		}
		s.fail(w, r, err)
		return
	}
	if err := s.clock.err(); err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready", "backend": s.opts.Backend})
}

// grantJSON is the body of a successful acquire or renew.
type grantJSON struct {
	Key       string `json:"key"`
	LeaseID   string `json:"lease_id"`
	Token     uint64 `json:"token"`
	Owner     string `json:"owner"`
	TTLMs     int64  `json:"ttl_ms"`
	ExpiresAt string `json:"expires_at"`
}

func toGrantJSON(g backend.Grant) grantJSON {
	return grantJSON{Key: g.Key, LeaseID: g.LeaseID, Token: g.Token, Owner: g.Owner, TTLMs: g.TTL.Milliseconds(), ExpiresAt: lease.Format(g.ExpiresAt)}
}

// acquire reads as its three steps: admission (input, rights, features,
// limits), the backend call, and the record of what came of it (lease
// accounting, metrics, orphan release, audit, answer).
func (s *Server) acquire(w http.ResponseWriter, r *http.Request) {
	req, leave, ok := s.admitAcquire(w, r)
	if !ok {
		return
	}
	defer leave()
	ctx, stop := s.longPoll(r.Context(), req.Wait)
	defer stop()
	start := time.Now()
	g, err := s.b.Acquire(ctx, req)
	s.m.acquires.WithLabelValues(s.opts.Backend, outcome(err)).Observe(time.Since(start).Seconds())
	s.recordAcquire(w, r, ctx, req, g, err)
}

// admitAcquire checks an acquire before the backend sees it: the input, the
// caller's right on the key, that the backend has what the request asks
// (sessions, idempotency), and this lockd's waiter and lease limits. It has
// answered when ok is false; otherwise leave must run once the acquire is
// over.
func (s *Server) admitAcquire(w http.ResponseWriter, r *http.Request) (req backend.AcquireRequest, leave func(), ok bool) {
	var body acquireBody
	return s.admitAcquireOf(w, r, acquireKind{body: &body, fields: &body, idempotent: true})
}

// acquireKind is what another primitive's acquire (rwlocks.go,
// semaphores.go) changes in admitAcquire: its body, which holds the lock
// fields and more, checked by more; the namespace of its keys in the waiter
// limits and idempotency records; whether the route honours Idempotency-Key
// (when the backend does); sessions, when set, refuses a session_id the
// primitive cannot keep (default: the backend keeps no sessions).
type acquireKind struct {
	body       any
	fields     *acquireBody
	more       func() error
	gate       string
	idempotent bool
	sessions   func() error
	// primitive names the primitive for lock-delays (backend.Primitive*;
	// default locks).
	primitive string
}

func (s *Server) admitAcquireOf(w http.ResponseWriter, r *http.Request, kind acquireKind) (req backend.AcquireRequest, leave func(), ok bool) {
	key, err := keyParam(r)
	if err == nil {
		err = s.decode(w, r, kind.body)
	}
	var p acquireParams
	if err == nil {
		p, err = kind.fields.params()
	}
	if err == nil && kind.more != nil {
		err = kind.more()
	}
	if err == nil {
		primitive := kind.primitive
		if primitive == "" {
			primitive = backend.PrimitiveLocks
		}
		p.lockDelay, err = s.lockDelayFor(p, primitive)
	}
	var idemKey string
	if err == nil {
		idemKey, err = parseIdempotencyKey(r.Header)
	}
	if err != nil {
		s.fail(w, r, err)
		return req, nil, false
	}
	if !s.allow(w, r, auth.RightLock, key) {
		return req, nil, false
	}
	if p.session != "" {
		refuse := kind.sessions
		if refuse == nil {
			refuse = s.noSessions
		}
		if err := refuse(); err != nil {
			s.fail(w, r, err)
			return req, nil, false
		}
	}
	if _, ok := s.b.(backend.Idempotent); idemKey != "" && (!ok || !kind.idempotent) {
		s.fail(w, r, errIdempotencyUnsupported)
		return req, nil, false
	}
	leave = func() {}
	if p.wait > 0 {
		out, limit, err := s.waiters.enter(kind.gate+key, s.opts.Limits)
		if err != nil {
			s.m.limited.WithLabelValues(limit).Inc()
			s.refuse(w, r, principal(r), err)
			return req, nil, false
		}
		leave = out
	}
	if who := principal(r); s.leaseLimit(who) > 0 {
		if err := s.leases.reserve(who.Name, s.leaseLimit(who), time.Now()); err != nil {
			leave()
			s.m.limited.WithLabelValues("leases").Inc()
			s.refuse(w, r, who, err)
			return req, nil, false
		}
	}
	req = backend.AcquireRequest{Key: key, Owner: p.owner, TTL: p.ttl, Wait: p.wait, Session: p.session, LockDelay: p.lockDelay,
		Idempotency: idempotency(principal(r), kind.gate+key, idemKey, p)}
	return req, leave, true
}

// noSessions refuses a session_id when the backend keeps no sessions.
func (s *Server) noSessions() error {
	if sessionsOf(s.b) == nil {
		return errNotSupported("sessions")
	}
	return nil
}

// longPoll is the context an acquire waits under: with a wait, it also ends
// when lockd stops (cause errShuttingDown), and the wait is counted.
func (s *Server) longPoll(ctx context.Context, wait time.Duration) (context.Context, func()) {
	if wait <= 0 {
		return ctx, func() {}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(stoppingCtx{s.stopping}, func() { cancel(errShuttingDown) })
	s.m.waiters.Inc()
	return ctx, func() {
		s.m.waiters.Dec()
		stop()
		cancel(nil)
	}
}

// recordAcquire settles what an acquire came to: the caller's lease count,
// a grant the client left before receiving, the audit line and the answer.
func (s *Server) recordAcquire(w http.ResponseWriter, r *http.Request, ctx context.Context, req backend.AcquireRequest, g backend.Grant, err error) {
	s.recordAcquireOf(w, r, ctx, req, g, err, toGrantJSON(g), s.b.Release)
}

// recordAcquireOf is recordAcquire for any primitive's grant g: answer is
// its body, release ends it should its client have left.
func (s *Server) recordAcquireOf(w http.ResponseWriter, r *http.Request, ctx context.Context, req backend.AcquireRequest, g backend.Grant, err error,
	answer any, release func(ctx context.Context, key, leaseID string) error) {
	key := req.Key
	who := principal(r)
	if s.leaseLimit(who) > 0 {
		if err == nil {
			s.leases.granted(who.Name, key, g.LeaseID, g.ExpiresAt, sessionBookRef(req.Session))
		} else {
			s.leases.abandoned(who.Name)
		}
	}
	if err == nil && r.Context().Err() != nil && !g.Replayed {
		// Granted as the client left: nobody will ever renew or release
		// it, so it would block the key for its whole TTL. (A replayed
		// grant is the first attempt's, which may have been delivered.)
		s.releaseOrphan(r, who, g, release)
		return
	}
	if err != nil {
		if errors.Is(context.Cause(ctx), errShuttingDown) {
			err = fmt.Errorf("%w: the wait for %q was cut short", errShuttingDown, key)
		}
		s.fail(w, r, err)
		return
	}
	if g.Replayed {
		// The same grant as the first attempt's, already counted.
		if s.auditing() {
			s.audit("grant_replayed", r, "key", key, "owner", g.Owner, "token", g.Token, "lease", leaseHash(g.LeaseID))
		}
		w.Header().Set(replayedHeader, "true")
		writeJSON(w, http.StatusOK, answer)
		return
	}
	if s.auditing() {
		s.audit("grant", r, "key", key, "owner", g.Owner, "token", g.Token, "lease", leaseHash(g.LeaseID), "ttl_ms", g.TTL.Milliseconds())
	}
	writeJSON(w, http.StatusOK, answer)
}

func outcome(err error) string {
	switch {
	case err == nil:
		return "granted"
	case errors.Is(err, backend.ErrHeld):
		return "held"
	case errors.Is(err, backend.ErrUnavailable):
		return "unavailable"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return "cancelled"
	}
	return "error"
}

// stoppingCtx lets context.AfterFunc watch the stopping channel.
type stoppingCtx struct{ done chan struct{} }

func (c stoppingCtx) Deadline() (time.Time, bool) { return time.Time{}, false }
func (c stoppingCtx) Done() <-chan struct{}       { return c.done }
func (c stoppingCtx) Err() error {
	select {
	case <-c.done:
		return context.Canceled
	default:
		return nil
	}
}
func (c stoppingCtx) Value(any) any { return nil }

// leaseRequest is the prelude renew and release share: the key, the body
// (into body, whose lease id is at leaseID) and the lease id checked, then
// more checks of the body's other fields (nil: none), then the lock right
// on the key. It has answered when ok is false.
func (s *Server) leaseRequest(w http.ResponseWriter, r *http.Request, body any, leaseID *(*string), more func() error) (key, id string, ok bool) {
	key, err := keyParam(r)
	if err == nil {
		err = s.decode(w, r, body)
	}
	if err == nil {
		id, err = checkLeaseID(*leaseID)
	}
	if err == nil && more != nil {
		err = more()
	}
	if err != nil {
		s.fail(w, r, err)
		return "", "", false
	}
	return key, id, s.allow(w, r, auth.RightLock, key)
}

func (s *Server) renew(w http.ResponseWriter, r *http.Request) {
	var (
		body renewBody
		ttl  time.Duration // zero: the lease keeps its TTL
	)
	key, id, ok := s.leaseRequest(w, r, &body, &body.LeaseID, func() (err error) {
		ttl, err = msField("ttl_ms", body.TTLMs, 0, lease.MinTTL, lease.MaxTTL)
		return err
	})
	if !ok {
		return
	}
	g, err := s.b.Renew(r.Context(), key, id, ttl)
	if err != nil {
		code := problemFor(err).Code
		if clientGone(r) {
			code = "client_closed_request"
		}
		s.audit("renew_failed", r, "key", key, "lease", leaseHash(id), "code", code)
		s.fail(w, r, err)
		return
	}
	if who := principal(r); s.leaseLimit(who) > 0 {
		s.leases.renewed(who.Name, key, id, g.ExpiresAt)
	}
	writeJSON(w, http.StatusOK, toGrantJSON(g))
}

func (s *Server) release(w http.ResponseWriter, r *http.Request) {
	var body releaseBody
	key, id, ok := s.leaseRequest(w, r, &body, &body.LeaseID, nil)
	if !ok {
		return
	}
	if err := s.b.Release(r.Context(), key, id); err != nil {
		s.fail(w, r, err)
		return
	}
	if s.auditing() {
		s.audit("release", r, "key", key, "lease", leaseHash(id))
	}
	s.leases.released(principal(r).Name, key, id)
	w.WriteHeader(http.StatusNoContent)
}

// lockJSON is one lock as inspection and listing show it.
type lockJSON struct {
	Key       string  `json:"key"`
	Held      bool    `json:"held"`
	Owner     *string `json:"owner,omitempty"`
	Token     *uint64 `json:"token,omitempty"`
	ExpiresAt *string `json:"expires_at,omitempty"`
	Waiters   *int    `json:"waiters,omitempty"`
	// DelayedUntil: a lock-delay is in force (inspection only).
	DelayedUntil *string `json:"delayed_until,omitempty"`
}

func toLockJSON(st backend.LockState, withWaiters bool) lockJSON {
	l := lockJSON{Key: st.Key, Held: st.Held && st.Holder != nil}
	if l.Held {
		exp := lease.Format(st.Holder.ExpiresAt)
		l.Owner, l.Token, l.ExpiresAt = &st.Holder.Owner, &st.Holder.Token, &exp
	}
	if withWaiters {
		n := st.Waiters
		l.Waiters = &n
	}
	return l
}

func (s *Server) inspect(w http.ResponseWriter, r *http.Request) {
	key, err := keyParam(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if !s.allow(w, r, auth.RightRead, key) {
		return
	}
	st, err := s.b.Inspect(r.Context(), key)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	l := toLockJSON(st, true)
	l.DelayedUntil = delayedUntil(st.DelayedUntil)
	writeJSON(w, http.StatusOK, l)
}

const (
	defaultListLimit = 100
	maxListLimit     = 1000
)

// listQuery is a validated list request.
type listQuery struct {
	prefix, after string
	limit         int
}

// parseListQuery checks list's query parameters: only prefix, after and
// limit, each once at most.
func parseListQuery(q url.Values) (listQuery, error) {
	lq := listQuery{limit: defaultListLimit}
	for name, vs := range q {
		if name != "prefix" && name != "after" && name != "limit" {
			return lq, badRequest("unknown_parameter", "unknown query parameter "+strconv.Quote(name))
		}
		if len(vs) > 1 {
			return lq, badRequest("invalid_"+name, name+" may be given once")
		}
	}
	lq.prefix, lq.after = q.Get("prefix"), q.Get("after")
	if err := checkPrefix("prefix", lq.prefix); err != nil {
		return lq, err
	}
	if err := checkPrefix("after", lq.after); err != nil {
		return lq, err
	}
	if q.Has("limit") {
		n, err := strconv.Atoi(q.Get("limit"))
		if err != nil || n < 1 || n > maxListLimit {
			return lq, badRequest("invalid_limit", fmt.Sprintf("limit must be an integer between 1 and %d", maxListLimit))
		}
		lq.limit = n
	}
	return lq, nil
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	lq, err := parseListQuery(r.URL.Query())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	prefix, after, limit := lq.prefix, lq.after, lq.limit
	if p := principal(r); !p.CanList(prefix) {
		s.refuse(w, r, p, &requestError{status: http.StatusForbidden, code: "forbidden",
			detail: "this token may not list keys under this prefix; pass a prefix it may read"})
		return
	}
	states, err := s.b.List(r.Context(), prefix, after, limit)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := struct {
		Locks []lockJSON `json:"locks"`
		Next  string     `json:"next,omitempty"`
	}{Locks: []lockJSON{}}
	for _, st := range states {
		out.Locks = append(out.Locks, toLockJSON(st, false))
	}
	if len(states) == limit {
		out.Next = states[len(states)-1].Key
	}
	writeJSON(w, http.StatusOK, out)
}
