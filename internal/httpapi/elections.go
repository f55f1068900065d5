package httpapi

// Leader elections over HTTP: campaign, proclaim, renew, resign, inspect and
// an observe stream (server-sent events). Election names follow the rules of
// lock keys, and rights and prefixes apply to them as to keys.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/auth"
	"github.com/lockd/lockd/internal/lease"
)

func (s *Server) electionRoutes(r chi.Router) {
	r.Get("/{name}", s.electionLeader)
	r.Get("/{name}/observe", s.electionObserve)
	r.Post("/{name}/campaign", s.campaign)
	r.Post("/{name}/proclaim", s.proclaim)
	r.Post("/{name}/renew", s.electionRenew)
	r.Post("/{name}/resign", s.resign)
}

type campaignBody struct {
	TTLMs     *jsonInt `json:"ttl_ms"`
	WaitMs    *jsonInt `json:"wait_ms"`
	Owner     *string  `json:"owner"`
	Value     *string  `json:"value"`
	SessionID *string  `json:"session_id"`
	// LockDelayMs as for an acquire.
	LockDelayMs *jsonInt `json:"lock_delay_ms"`
}

type proclaimBody struct {
	LeaseID *string `json:"lease_id"`
	Value   *string `json:"value"`
}

// leadershipJSON is the body of a won campaign, a proclaim and a renew.
type leadershipJSON struct {
	Name      string `json:"name"`
	LeaseID   string `json:"lease_id"`
	Term      uint64 `json:"term"`
	Owner     string `json:"owner"`
	Value     string `json:"value"`
	TTLMs     int64  `json:"ttl_ms"`
	ExpiresAt string `json:"expires_at"`
}

func toLeadershipJSON(l backend.Leadership) leadershipJSON {
	return leadershipJSON{Name: l.Name, LeaseID: l.LeaseID, Term: l.Term, Owner: l.Owner, Value: l.Value,
		TTLMs: l.TTL.Milliseconds(), ExpiresAt: lease.Format(l.ExpiresAt)}
}

// leaderJSON is the leader as everyone sees it: in inspection, in a refused
// campaign's problem and in observe's leader events.
type leaderJSON struct {
	Term      uint64 `json:"term"`
	Owner     string `json:"owner"`
	Value     string `json:"value"`
	ExpiresAt string `json:"expires_at"`
}

func toLeaderJSON(l *backend.Leader) *leaderJSON {
	if l == nil {
		return nil
	}
	return &leaderJSON{Term: l.Term, Owner: l.Owner, Value: l.Value, ExpiresAt: lease.Format(l.ExpiresAt)}
}

func checkValue(v *string) (string, error) {
	if v == nil {
		return "", nil
	}
	if len(*v) > backend.MaxElectionValue || !utf8.ValidString(*v) {
		return "", badRequest("invalid_value", fmt.Sprintf("value is limited to %d bytes of UTF-8", backend.MaxElectionValue))
	}
	return *v, nil
}

// election checks the route's name and the caller's right on it, and finds
// the backend's elections; it answers the request itself when any fails.
func (s *Server) election(w http.ResponseWriter, r *http.Request, right auth.Right, body any) (string, backend.Elections, bool) {
	name, err := pathName(r, "name")
	el := elections(s.b)
	if err == nil && el == nil {
		err = errNotSupported("elections")
	}
	if err == nil && body != nil {
		err = s.decode(w, r, body)
	}
	if err != nil {
		s.fail(w, r, err)
		return "", nil, false
	}
	if !s.allow(w, r, right, name) {
		return "", nil, false
	}
	return name, el, true
}

func (s *Server) campaign(w http.ResponseWriter, r *http.Request) {
	var body campaignBody
	name, el, ok := s.election(w, r, auth.RightLock, &body)
	if !ok {
		return
	}
	p, err := acquireBody{TTLMs: body.TTLMs, WaitMs: body.WaitMs, Owner: body.Owner, SessionID: body.SessionID, LockDelayMs: body.LockDelayMs}.params()
	var value string
	if err == nil {
		value, err = checkValue(body.Value)
	}
	if err == nil {
		p.lockDelay, err = s.lockDelayFor(p, backend.PrimitiveElections)
	}
	if err == nil && p.session != "" && sessionsOf(s.b) == nil {
		err = errNotSupported("sessions")
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	ctx := r.Context()
	if p.wait > 0 {
		leave, limit, err := s.waiters.enter("election/"+name, s.opts.Limits)
		if err != nil {
			s.m.limited.WithLabelValues(limit).Inc()
			s.refuse(w, r, principal(r), err)
			return
		}
		defer leave()
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		stop := context.AfterFunc(stoppingCtx{s.stopping}, func() { cancel(errShuttingDown) })
		defer stop()
		s.m.waiters.Inc()
		defer s.m.waiters.Dec()
	}
	l, err := el.Campaign(ctx, backend.CampaignRequest{Name: name, Owner: p.owner, Value: value, TTL: p.ttl, Wait: p.wait, Session: p.session, LockDelay: p.lockDelay})
	if err == nil && r.Context().Err() != nil {
		// Elected as the client left: nobody would renew or resign, and
		// the election would stay led by nobody for a whole TTL.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), orphanReleaseTimeout)
		defer cancel()
		if err := el.Resign(rctx, name, l.LeaseID); err != nil {
			s.log.Warn("could not resign a leadership whose client left", "name", name, "term", l.Term, "err", err)
		}
		return
	}
	if err != nil {
		if errors.Is(context.Cause(ctx), errShuttingDown) {
			err = fmt.Errorf("%w: the campaign for %q was cut short", errShuttingDown, name)
		}
		s.fail(w, r, err)
		return
	}
	s.audit("elected", r, "name", name, "owner", l.Owner, "term", l.Term, "lease", leaseHash(l.LeaseID), "ttl_ms", l.TTL.Milliseconds())
	writeJSON(w, http.StatusOK, toLeadershipJSON(l))
}

func (s *Server) proclaim(w http.ResponseWriter, r *http.Request) {
	var body proclaimBody
	name, el, ok := s.election(w, r, auth.RightLock, &body)
	if !ok {
		return
	}
	id, err := checkLeaseID(body.LeaseID)
	var value string
	if err == nil {
		value, err = checkValue(body.Value)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	l, err := el.Proclaim(r.Context(), name, id, value)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toLeadershipJSON(l))
}

func (s *Server) electionRenew(w http.ResponseWriter, r *http.Request) {
	var body renewBody
	name, el, ok := s.election(w, r, auth.RightLock, &body)
	if !ok {
		return
	}
	id, err := checkLeaseID(body.LeaseID)
	var ttl time.Duration
	if err == nil {
		ttl, err = msField("ttl_ms", body.TTLMs, 0, lease.MinTTL, lease.MaxTTL)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	l, err := el.Renew(r.Context(), name, id, ttl)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, toLeadershipJSON(l))
}

func (s *Server) resign(w http.ResponseWriter, r *http.Request) {
	var body releaseBody
	name, el, ok := s.election(w, r, auth.RightLock, &body)
	if !ok {
		return
	}
	id, err := checkLeaseID(body.LeaseID)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := el.Resign(r.Context(), name, id); err != nil {
		s.fail(w, r, err)
		return
	}
	s.audit("resign", r, "name", name, "lease", leaseHash(id))
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) electionLeader(w http.ResponseWriter, r *http.Request) {
	name, el, ok := s.election(w, r, auth.RightRead, nil)
	if !ok {
		return
	}
	st, err := el.Leader(r.Context(), name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, struct {
		Name         string      `json:"name"`
		Leader       *leaderJSON `json:"leader,omitempty"`
		Candidates   int         `json:"candidates"`
		DelayedUntil *string     `json:"delayed_until,omitempty"`
	}{name, toLeaderJSON(st.Leader), st.Candidates, delayedUntil(st.DelayedUntil)})
}

// The events of an observe stream.
type noLeaderJSON struct {
	LastTerm uint64 `json:"last_term"`
	Reason   string `json:"reason,omitempty"`
}

type resyncJSON struct {
	Reason string `json:"reason"`
}

// sse writes server-sent events, each flushed at once; event gives one an
// id of this stream's random prefix and a sequence number, send the id it
// is given.
type sse struct {
	w      http.ResponseWriter
	rc     *http.ResponseController
	stream string
	seq    uint64
}

func (e *sse) event(name string, data any) error {
	e.seq++
	return e.send(fmt.Sprintf("%s-%d", e.stream, e.seq), name, data)
}

// send writes one event with id (none when empty) and flushes it.
func (e *sse) send(id, name string, data any) error {
	b, err := json.Marshal(data)
	if err != nil {
		return err
	}
	if id != "" {
		if _, err := fmt.Fprintf(e.w, "id: %s\n", id); err != nil {
			return err
		}
	}
	if _, err := fmt.Fprintf(e.w, "event: %s\ndata: %s\n\n", name, b); err != nil {
		return err
	}
	return e.rc.Flush()
}

func (e *sse) comment(text string) error {
	if _, err := fmt.Fprintf(e.w, ": %s\n\n", text); err != nil {
		return err
	}
	return e.rc.Flush()
}

func (s *Server) electionObserve(w http.ResponseWriter, r *http.Request) {
	name, el, ok := s.election(w, r, auth.RightRead, nil)
	if !ok {
		return
	}
	leave, ok := s.enterStream(w, r, "election", name)
	if !ok {
		return
	}
	defer leave()
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	events, err := el.Observe(ctx, name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := startSSE(w)
	// The first event is the current state: a resume decides from it.
	resume := r.Header.Get("Last-Event-ID")
	if out.comment("observing "+strconv.Quote(name)) != nil {
		return
	}
	ping := time.NewTicker(s.streamPing())
	defer ping.Stop()
	for {
		var err error
		select {
		case ev := <-events:
			if resume != "" && ev.Err == nil {
				skip, gap := resumeFrom(resume, ev)
				resume = ""
				if gap && out.event("resync", resyncJSON{Reason: "cursor_unknown"}) != nil {
					return
				}
				if skip {
					continue
				}
			}
			switch {
			case ev.Leader != nil:
				err = out.send(electionEventID(ev), "leader", toLeaderJSON(ev.Leader))
			case ev.NoLeader != nil:
				err = out.send(electionEventID(ev), "no_leader", noLeaderJSON{LastTerm: ev.NoLeader.LastTerm, Reason: ev.NoLeader.Reason})
			default:
				// The backend's stream ended. Say so, then follow a
				// new one, whose first event is the current state.
				if ctx.Err() != nil {
					return
				}
				s.log.Warn("election observe stream lost", "name", name, "err", ev.Err)
				if out.event("resync", resyncJSON{Reason: "backend_unavailable"}) != nil {
					return
				}
				if events, ok = s.reobserve(ctx, el, name, out, ping); !ok {
					return
				}
			}
		case <-ping.C:
			err = out.comment("ping")
		case <-s.stopping:
			_ = out.event("shutdown", struct{}{})
			return
		case <-ctx.Done():
			return
		}
		if err != nil {
			return // the client left
		}
	}
}

// reobserve opens el's stream again, once a second, pinging meanwhile.
func (s *Server) reobserve(ctx context.Context, el backend.Elections, name string, out *sse, ping *time.Ticker) (<-chan backend.ElectionEvent, bool) {
	retry := time.NewTicker(time.Second)
	defer retry.Stop()
	for {
		select {
		case <-retry.C:
			if events, err := el.Observe(ctx, name); err == nil {
				return events, true
			}
		case <-ping.C:
			if out.comment("ping") != nil {
				return nil, false
			}
		case <-s.stopping:
			_ = out.event("shutdown", struct{}{})
			return nil, false
		case <-ctx.Done():
			return nil, false
		}
	}
}

// An observe event's id names the state it leaves the election in: "l.<term>.<value hash>"
// for a leader, "n.<last term>" for none. lockd keeps no log of past
// events; a reconnect resumes from the state its Last-Event-ID names.
func electionEventID(ev backend.ElectionEvent) string {
	if ev.Leader != nil {
		h := fnv.New64a()
		h.Write([]byte(ev.Leader.Value))
		return fmt.Sprintf("l.%d.%016x", ev.Leader.Term, h.Sum64())
	}
	return fmt.Sprintf("n.%d", ev.NoLeader.LastTerm)
}

// resumeFrom decides how a stream resumed from Last-Event-ID id goes on,
// given its first event (the election's state now): skip it (the client
// has seen this very state) or send it, and whether changes may have been
// missed in between (gap: resync first). Terms only increase and each names
// one leadership, so from a leader the client saw, the same term with
// another value is a proclaim (coalesced), and no leader after that same
// term is its end: neither hides a change. Anything else may have (a term
// that came and went), and so may a state with no last term to go by.
func resumeFrom(id string, first backend.ElectionEvent) (skip, gap bool) {
	now := electionEventID(first)
	switch {
	case now == id && (first.Leader != nil || first.NoLeader.LastTerm > 0):
		return true, false
	case first.Leader != nil && strings.HasPrefix(id, fmt.Sprintf("l.%d.", first.Leader.Term)):
		return false, false
	case first.NoLeader != nil && first.NoLeader.LastTerm > 0 && strings.HasPrefix(id, fmt.Sprintf("l.%d.", first.NoLeader.LastTerm)):
		return false, false
	}
	return false, true
}

// startSSE answers 200 text/event-stream, for proxies not to buffer.
func startSSE(w http.ResponseWriter) *sse {
	var id [6]byte
	_, _ = rand.Read(id[:])
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no") // proxies must not buffer the stream
	w.WriteHeader(http.StatusOK)
	return &sse{w: w, rc: http.NewResponseController(w), stream: hex.EncodeToString(id[:])}
}

func (s *Server) streamPing() time.Duration {
	if s.opts.StreamPing > 0 {
		return s.opts.StreamPing
	}
	return 15 * time.Second
}
