package httpapi

// Sessions over HTTP: open, renew and close. A session id is a capability
// like a lease id: it is never logged (the audit shows a hash of it), and
// rights and prefixes apply to the session's owner.

import (
	"errors"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/auth"
	"github.com/lockd/lockd/internal/lease"
)

func (s *Server) sessionRoutes(r chi.Router) {
	r.Post("/", s.openSession)
	r.Post("/renew", s.renewSession)
	r.Post("/close", s.closeSession)
}

type openSessionBody struct {
	TTLMs *jsonInt `json:"ttl_ms"`
	Owner *string  `json:"owner"`
}

type sessionIDBody struct {
	SessionID *string  `json:"session_id"`
	TTLMs     *jsonInt `json:"ttl_ms"`
}

type closeSessionBody struct {
	SessionID *string `json:"session_id"`
}

// sessionJSON is the body of an opened or renewed session.
type sessionJSON struct {
	SessionID string `json:"session_id"`
	Owner     string `json:"owner"`
	TTLMs     int64  `json:"ttl_ms"`
	ExpiresAt string `json:"expires_at"`
}

func toSessionJSON(ss backend.Session) sessionJSON {
	return sessionJSON{SessionID: ss.ID, Owner: ss.Owner, TTLMs: ss.TTL.Milliseconds(), ExpiresAt: lease.Format(ss.ExpiresAt)}
}

// sessionsOf is b's sessions, or nil when it has none.
func sessionsOf(b backend.Backend) backend.Sessions {
	if ss, ok := b.(backend.Sessioner); ok {
		return ss.Sessions()
	}
	return nil
}

func checkSessionID(id *string) (string, error) {
	if id == nil || *id == "" {
		return "", badRequest("invalid_session_id", "session_id is required")
	}
	if !lease.ValidID(*id) {
		return "", badRequest("invalid_session_id", "session_id is not one lockd issues")
	}
	return *id, nil
}

// sessionHash is what the audit log shows of a session id.
func sessionHash(id string) string { return leaseHash(id) }

// sessionBookRef is how the lease book knows a session ("" for none).
func sessionBookRef(id string) string {
	if id == "" {
		return ""
	}
	return sessionHash(id)
}

// sessions finds the backend's sessions and decodes the body; it answers
// the request itself when either fails.
func (s *Server) sessions(w http.ResponseWriter, r *http.Request, body any) (backend.Sessions, bool) {
	ss := sessionsOf(s.b)
	var err error
	if ss == nil {
		err = errNotSupported("sessions")
	} else {
		err = s.decode(w, r, body)
	}
	if err != nil {
		s.fail(w, r, err)
		return nil, false
	}
	return ss, true
}

// everyOwner reports whether p may lock under every prefix, so that no
// session's owner needs to be read to check it.
func everyOwner(p *auth.Principal) bool {
	if p.Rights[auth.RightAdmin] {
		return true
	}
	if !p.Rights[auth.RightLock] {
		return false
	}
	for _, pre := range p.Prefixes {
		if pre == "" {
			return true
		}
	}
	return false
}

// allowSession checks the caller's lock right on the owner of session id,
// reading the session only when the caller's rights depend on it.
func (s *Server) allowSession(w http.ResponseWriter, r *http.Request, ss backend.Sessions, id string) bool {
	if everyOwner(principal(r)) {
		return true
	}
	if !principal(r).Rights[auth.RightLock] {
		return s.allow(w, r, auth.RightLock, "")
	}
	sess, err := ss.Get(r.Context(), id)
	if err != nil {
		s.fail(w, r, err)
		return false
	}
	return s.allow(w, r, auth.RightLock, sess.Owner)
}

func (s *Server) openSession(w http.ResponseWriter, r *http.Request) {
	var body openSessionBody
	ss, ok := s.sessions(w, r, &body)
	if !ok {
		return
	}
	p, err := acquireBody{TTLMs: body.TTLMs, Owner: body.Owner}.params()
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if !s.allow(w, r, auth.RightLock, p.owner) {
		return
	}
	start := time.Now()
	sess, err := ss.Open(r.Context(), p.owner, p.ttl)
	s.m.sessions.WithLabelValues(s.opts.Backend, "open", sessionOutcome(err)).Observe(time.Since(start).Seconds())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.audit("session_open", r, "owner", sess.Owner, "session", sessionHash(sess.ID), "ttl_ms", sess.TTL.Milliseconds())
	writeJSON(w, http.StatusCreated, toSessionJSON(sess))
}

func (s *Server) renewSession(w http.ResponseWriter, r *http.Request) {
	var body sessionIDBody
	ss, ok := s.sessions(w, r, &body)
	if !ok {
		return
	}
	id, err := checkSessionID(body.SessionID)
	var ttl time.Duration // zero: the session keeps its TTL
	if err == nil {
		ttl, err = msField("ttl_ms", body.TTLMs, 0, lease.MinTTL, lease.MaxTTL)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if !s.allowSession(w, r, ss, id) {
		return
	}
	start := time.Now()
	sess, err := ss.Renew(r.Context(), id, ttl)
	s.m.sessions.WithLabelValues(s.opts.Backend, "renew", sessionOutcome(err)).Observe(time.Since(start).Seconds())
	if err != nil {
		code := problemFor(err).Code
		if clientGone(r) {
			code = "client_closed_request"
		}
		s.audit("session_renew_failed", r, "session", sessionHash(id), "code", code)
		s.fail(w, r, err)
		return
	}
	s.leases.sessionRenewed(sessionHash(id), sess.ExpiresAt)
	writeJSON(w, http.StatusOK, toSessionJSON(sess))
}

func (s *Server) closeSession(w http.ResponseWriter, r *http.Request) {
	var body closeSessionBody
	ss, ok := s.sessions(w, r, &body)
	if !ok {
		return
	}
	id, err := checkSessionID(body.SessionID)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if !s.allowSession(w, r, ss, id) {
		return
	}
	start := time.Now()
	err = ss.Close(r.Context(), id)
	s.m.sessions.WithLabelValues(s.opts.Backend, "close", sessionOutcome(err)).Observe(time.Since(start).Seconds())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.audit("session_close", r, "session", sessionHash(id))
	s.leases.sessionClosed(sessionHash(id))
	w.WriteHeader(http.StatusNoContent)
}

func sessionOutcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, backend.ErrSessionExpired):
		return "expired"
	}
	return outcome(err)
}
