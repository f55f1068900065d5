package httpapi

// Counting semaphores over HTTP: acquire (a long poll, as for locks), renew,
// release and inspect. Semaphore keys follow the rules of lock keys, and
// rights and prefixes apply to them as to keys: lock for acquire, renew and
// release, read for inspect.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/auth"
	"github.com/lockd/lockd/internal/lease"
)

func (s *Server) semaphoreRoutes(r chi.Router) {
	r.Get("/{key}", s.semaphoreInspect)
	r.Post("/{key}/acquire", s.semaphoreAcquire)
	r.Post("/{key}/renew", s.semaphoreRenew)
	r.Post("/{key}/release", s.semaphoreRelease)
}

// semaphoresOf is b's semaphores, or nil when it has none.
func semaphoresOf(b backend.Backend) backend.Semaphores {
	if sm, ok := b.(backend.Semaphorer); ok {
		return sm.Semaphores()
	}
	return nil
}

type semaphoreBody struct {
	acquireBody
	Permits *jsonInt `json:"permits"`
}

// permitJSON is the body of a granted or renewed permit.
type permitJSON struct {
	Key       string `json:"key"`
	LeaseID   string `json:"lease_id"`
	Token     uint64 `json:"token"`
	Slot      int    `json:"slot"`
	Permits   int    `json:"permits"`
	Owner     string `json:"owner"`
	TTLMs     int64  `json:"ttl_ms"`
	ExpiresAt string `json:"expires_at"`
}

func toPermitJSON(p backend.Permit) permitJSON {
	return permitJSON{Key: p.Key, LeaseID: p.LeaseID, Token: p.Token, Slot: p.Slot, Permits: p.Permits, Owner: p.Owner,
		TTLMs: p.TTL.Milliseconds(), ExpiresAt: lease.Format(p.ExpiresAt)}
}

// semHolderJSON is one permit as everyone sees it: in inspection and in a
// refused acquire's problem.
type semHolderJSON struct {
	Slot      int    `json:"slot"`
	Owner     string `json:"owner"`
	Token     uint64 `json:"token"`
	ExpiresAt string `json:"expires_at"`
}

func toSemHolders(hs []backend.SemaphoreHolder) []semHolderJSON {
	out := []semHolderJSON{}
	for _, h := range hs {
		out = append(out, semHolderJSON{Slot: h.Slot, Owner: h.Owner, Token: h.Token, ExpiresAt: lease.Format(h.ExpiresAt)})
	}
	return out
}

// semaphoreProblem adds what a semaphore's refusal says to p: the holders
// of a give-up, the current size of a mismatch.
func semaphoreProblem(err error, p *Problem) {
	var he *backend.SemaphoreHeldError
	if errors.As(err, &he) && he.Holders != nil {
		hs := toSemHolders(he.Holders)
		p.Holders = &hs
	}
	var me *backend.PermitsMismatchError
	if errors.As(err, &me) {
		n := me.Permits
		p.Permits = &n
	}
}

func checkPermits(v *jsonInt) (int, error) {
	if v == nil || *v < 1 || *v > backend.MaxPermits {
		return 0, badRequest("invalid_permits", fmt.Sprintf("permits is required: the semaphore's size, 1..%d", backend.MaxPermits))
	}
	return int(*v), nil
}

// semaphore checks the route's key and finds the backend's semaphores; it
// answers the request itself when either fails.
func (s *Server) semaphore(w http.ResponseWriter, r *http.Request) (string, backend.Semaphores, bool) {
	key, err := keyParam(r)
	sm := semaphoresOf(s.b)
	if err == nil && sm == nil {
		err = errNotSupported("semaphores")
	}
	if err != nil {
		s.fail(w, r, err)
		return "", nil, false
	}
	return key, sm, true
}

func (s *Server) semaphoreAcquire(w http.ResponseWriter, r *http.Request) {
	req, sm, leave, ok := s.admitPermit(w, r)
	if !ok {
		return
	}
	defer leave()
	ctx, stop := s.longPoll(r.Context(), req.Wait)
	defer stop()
	p, err := sm.Acquire(ctx, req)
	s.recordPermit(w, r, ctx, sm, req, p, err)
}

// admitPermit is admitAcquire for a permit: input, the caller's right on
// the key, what the backend has (semaphores, sessions, idempotency), and
// this lockd's waiter and lease limits. It has answered when ok is false;
// otherwise leave must run once the acquire is over.
func (s *Server) admitPermit(w http.ResponseWriter, r *http.Request) (req backend.SemaphoreRequest, sm backend.Semaphores, leave func(), ok bool) {
	_, sm, ok = s.semaphore(w, r)
	if !ok {
		return req, nil, nil, false
	}
	var body semaphoreBody
	var permits int
	lr, leave, ok := s.admitAcquireOf(w, r, acquireKind{body: &body, fields: &body.acquireBody, gate: "semaphore/", primitive: backend.PrimitiveSemaphores,
		idempotent: sm.Features().Idempotency,
		more:       func() (err error) { permits, err = checkPermits(body.Permits); return err },
		sessions: func() error {
			if sessionsOf(s.b) == nil || !sm.Features().Sessions {
				return errNotSupported("permits in sessions")
			}
			return nil
		}})
	if !ok {
		return req, nil, nil, false
	}
	if lr.Idempotency.Key != "" {
		// The size defines the grant too: a retry with another is another request.
		lr.Idempotency.Fingerprint += fmt.Sprintf(".%d", permits)
	}
	req = backend.SemaphoreRequest{Key: lr.Key, Permits: permits, Owner: lr.Owner, TTL: lr.TTL, Wait: lr.Wait, Session: lr.Session, Idempotency: lr.Idempotency, LockDelay: lr.LockDelay}
	return req, sm, leave, true
}

// leaseBookKey keeps a permit apart from a lock of the same key in the
// caller's lease count.
func semBookKey(key string) string { return "semaphore/" + key }

// recordPermit is recordAcquire for a permit.
func (s *Server) recordPermit(w http.ResponseWriter, r *http.Request, ctx context.Context, sm backend.Semaphores, req backend.SemaphoreRequest, p backend.Permit, err error) {
	key, who := req.Key, principal(r)
	if s.leaseLimit(who) > 0 {
		if err == nil {
			s.leases.granted(who.Name, semBookKey(key), p.LeaseID, p.ExpiresAt, sessionBookRef(req.Session))
		} else {
			s.leases.abandoned(who.Name)
		}
	}
	if err == nil && r.Context().Err() != nil && !p.Replayed {
		// Granted as the client left: nobody would renew or release it,
		// and the slot would be taken for a whole TTL.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), orphanReleaseTimeout)
		defer cancel()
		rerr := sm.Release(rctx, key, p.LeaseID)
		if s.leaseLimit(who) > 0 {
			s.leases.released(who.Name, semBookKey(key), p.LeaseID)
		}
		code := "released"
		if rerr != nil {
			code = problemFor(rerr).Code
			s.log.Warn("releasing a permit whose client left", "key", key, "token", p.Token, "err", rerr)
		}
		s.audit("orphan_released", r, "semaphore", key, "token", p.Token, "lease", leaseHash(p.LeaseID), "result", code)
		return
	}
	if err != nil {
		if errors.Is(context.Cause(ctx), errShuttingDown) {
			err = fmt.Errorf("%w: the wait for %q was cut short", errShuttingDown, key)
		}
		s.fail(w, r, err)
		return
	}
	if p.Replayed {
		s.audit("permit_replayed", r, "semaphore", key, "owner", p.Owner, "token", p.Token, "slot", p.Slot, "lease", leaseHash(p.LeaseID))
		w.Header().Set(replayedHeader, "true")
		writeJSON(w, http.StatusOK, toPermitJSON(p))
		return
	}
	s.audit("permit", r, "semaphore", key, "owner", p.Owner, "token", p.Token, "slot", p.Slot, "permits", p.Permits,
		"lease", leaseHash(p.LeaseID), "ttl_ms", p.TTL.Milliseconds())
	writeJSON(w, http.StatusOK, toPermitJSON(p))
}

func (s *Server) semaphoreRenew(w http.ResponseWriter, r *http.Request) {
	if _, _, ok := s.semaphore(w, r); !ok {
		return
	}
	var (
		body renewBody
		ttl  time.Duration
	)
	key, id, ok := s.leaseRequest(w, r, &body, &body.LeaseID, func() (err error) {
		ttl, err = msField("ttl_ms", body.TTLMs, 0, lease.MinTTL, lease.MaxTTL)
		return err
	})
	if !ok {
		return
	}
	p, err := semaphoresOf(s.b).Renew(r.Context(), key, id, ttl)
	if err != nil {
		code := problemFor(err).Code
		if clientGone(r) {
			code = "client_closed_request"
		}
		s.audit("renew_failed", r, "semaphore", key, "lease", leaseHash(id), "code", code)
		s.fail(w, r, err)
		return
	}
	if who := principal(r); s.leaseLimit(who) > 0 {
		s.leases.renewed(who.Name, semBookKey(key), id, p.ExpiresAt)
	}
	writeJSON(w, http.StatusOK, toPermitJSON(p))
}

func (s *Server) semaphoreRelease(w http.ResponseWriter, r *http.Request) {
	if _, _, ok := s.semaphore(w, r); !ok {
		return
	}
	var body releaseBody
	key, id, ok := s.leaseRequest(w, r, &body, &body.LeaseID, nil)
	if !ok {
		return
	}
	if err := semaphoresOf(s.b).Release(r.Context(), key, id); err != nil {
		s.fail(w, r, err)
		return
	}
	s.audit("release", r, "semaphore", key, "lease", leaseHash(id))
	s.leases.released(principal(r).Name, semBookKey(key), id)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) semaphoreInspect(w http.ResponseWriter, r *http.Request) {
	key, sm, ok := s.semaphore(w, r)
	if !ok || !s.allow(w, r, auth.RightRead, key) {
		return
	}
	st, err := sm.Inspect(r.Context(), key)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var delayed []semDelayJSON
	for _, d := range st.Delayed {
		delayed = append(delayed, semDelayJSON{Slot: d.Slot, lockDelayJSON: *toLockDelayJSON(&d.Delay)})
	}
	writeJSON(w, http.StatusOK, struct {
		Key     string          `json:"key"`
		Permits int             `json:"permits"`
		Holders []semHolderJSON `json:"holders"`
		Waiters int             `json:"waiters"`
		Delayed []semDelayJSON  `json:"delayed,omitempty"`
	}{key, st.Permits, toSemHolders(st.Holders), st.Waiters, delayed})
}

// semDelayJSON is a slot under a lock-delay, in inspection.
type semDelayJSON struct {
	Slot int `json:"slot"`
	lockDelayJSON
}
