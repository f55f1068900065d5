package httpapi

// Fair read-write locks over HTTP: acquire in a mode, renew, release,
// inspect. Keys follow the rules of lock keys, in their own namespace;
// rights and prefixes apply to them as to lock keys. An acquire goes
// through the lock handlers' steps: admission, the backend call (a long
// poll with wait_ms), and the record of what came of it.

import (
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/auth"
	"github.com/lockd/lockd/internal/lease"
)

func (s *Server) rwlockRoutes(r chi.Router) {
	r.Get("/{key}", s.rwInspect)
	r.Post("/{key}/acquire", s.rwAcquire)
	r.Post("/{key}/renew", s.rwRenew)
	r.Post("/{key}/release", s.rwRelease)
}

type rwAcquireBody struct {
	acquireBody
	Mode *string `json:"mode"`
}

// rwGrantJSON is the body of a successful rwlock acquire or renew: a lock
// grant plus its mode.
type rwGrantJSON struct {
	grantJSON
	Mode string `json:"mode"`
}

func toRWGrantJSON(g backend.RWGrant) rwGrantJSON {
	return rwGrantJSON{grantJSON: toGrantJSON(g.Grant), Mode: g.Mode}
}

// rwHolderJSON is one holder as inspection and a refused acquire show it.
type rwHolderJSON struct {
	Mode      string `json:"mode"`
	Owner     string `json:"owner"`
	Token     uint64 `json:"token"`
	ExpiresAt string `json:"expires_at"`
}

func toRWHoldersJSON(hs []backend.RWHolder) []rwHolderJSON {
	out := []rwHolderJSON{}
	for _, h := range hs {
		out = append(out, rwHolderJSON{Mode: h.Mode, Owner: h.Owner, Token: h.Token, ExpiresAt: lease.Format(h.ExpiresAt)})
	}
	return out
}

// rwlocksOf is b's read-write locks, or nil when it has none.
func rwlocksOf(b backend.Backend) backend.RWLocks {
	if rw, ok := b.(backend.RWLocker); ok {
		return rw.RWLocks()
	}
	return nil
}

func checkMode(m *string) (string, error) {
	if m == nil || (*m != backend.ModeRead && *m != backend.ModeWrite) {
		return "", badRequest("invalid_mode", `mode is required: "read" or "write"`)
	}
	return *m, nil
}

// rw answers 501 when the backend keeps no read-write locks.
func (s *Server) rw(w http.ResponseWriter, r *http.Request) (backend.RWLocks, bool) {
	rw := rwlocksOf(s.b)
	if rw == nil {
		s.fail(w, r, errNotSupported("rwlocks"))
		return nil, false
	}
	return rw, true
}

func (s *Server) rwAcquire(w http.ResponseWriter, r *http.Request) {
	rw, ok := s.rw(w, r)
	if !ok {
		return
	}
	var (
		body rwAcquireBody
		mode string
	)
	req, leave, ok := s.admitAcquireOf(w, r, acquireKind{body: &body, fields: &body.acquireBody, gate: "rwlock/", primitive: backend.PrimitiveRWLocks,
		more: func() (err error) {
			if mode, err = checkMode(body.Mode); err == nil && body.SessionID != nil && !rw.Features().Sessions {
				err = errNotSupported("sessions on rwlocks")
			}
			return err
		}})
	if !ok {
		return
	}
	defer leave()
	ctx, stop := s.longPoll(r.Context(), req.Wait)
	defer stop()
	start := time.Now()
	g, err := rw.Acquire(ctx, backend.RWAcquireRequest{AcquireRequest: req, Mode: mode})
	s.m.acquires.WithLabelValues(s.opts.Backend, outcome(err)).Observe(time.Since(start).Seconds())
	s.recordAcquireOf(w, r, ctx, req, g.Grant, err, toRWGrantJSON(g), rw.Release)
}

func (s *Server) rwRenew(w http.ResponseWriter, r *http.Request) {
	rw, ok := s.rw(w, r)
	if !ok {
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
	g, err := rw.Renew(r.Context(), key, id, ttl)
	if err != nil {
		s.audit("renew_failed", r, "rwlock", key, "lease", leaseHash(id), "code", problemFor(err).Code)
		s.fail(w, r, err)
		return
	}
	if who := principal(r); s.leaseLimit(who) > 0 {
		s.leases.renewed(who.Name, key, id, g.ExpiresAt)
	}
	writeJSON(w, http.StatusOK, toRWGrantJSON(g))
}

func (s *Server) rwRelease(w http.ResponseWriter, r *http.Request) {
	rw, ok := s.rw(w, r)
	if !ok {
		return
	}
	var body releaseBody
	key, id, ok := s.leaseRequest(w, r, &body, &body.LeaseID, nil)
	if !ok {
		return
	}
	if err := rw.Release(r.Context(), key, id); err != nil {
		s.fail(w, r, err)
		return
	}
	s.audit("release", r, "rwlock", key, "lease", leaseHash(id))
	s.leases.released(principal(r).Name, key, id)
	w.WriteHeader(http.StatusNoContent)
}

// rwStateJSON is GET /v1/rwlocks/{key}.
type rwStateJSON struct {
	Key     string         `json:"key"`
	Mode    string         `json:"mode,omitempty"`
	Holders []rwHolderJSON `json:"holders"`
	Waiters rwWaitersJSON  `json:"waiters"`
	// DelayedUntil: a lock-delay is in force.
	DelayedUntil *string `json:"delayed_until,omitempty"`
}

type rwWaitersJSON struct {
	Read  int `json:"read"`
	Write int `json:"write"`
}

func (s *Server) rwInspect(w http.ResponseWriter, r *http.Request) {
	rw, ok := s.rw(w, r)
	if !ok {
		return
	}
	key, err := keyParam(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if !s.allow(w, r, auth.RightRead, key) {
		return
	}
	st, err := rw.Inspect(r.Context(), key)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, rwStateJSON{Key: key, Mode: st.Mode, Holders: toRWHoldersJSON(st.Holders),
		Waiters: rwWaitersJSON{Read: st.WaitingReaders, Write: st.WaitingWriters}, DelayedUntil: delayedUntil(st.DelayedUntil)})
}
