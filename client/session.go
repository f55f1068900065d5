package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// ErrSessionExpired: the session is over (expired, closed, or never
// existed), as the server said with 410 session_expired, or as the client
// knows because its own deadline for the session passed.
var ErrSessionExpired = errors.New("lockd: session expired")

// SessionOptions are the parameters of a session. Zero values take the
// server's defaults (TTL 15 s).
type SessionOptions struct {
	TTL   time.Duration // 100 ms .. 1 h
	Owner string        // rights and token prefixes apply to it
	// Margin makes Lost close this long before the client's deadline.
	Margin time.Duration
	// RenewEvery is how often the session renews itself. Default TTL/3.
	RenewEvery time.Duration
}

// Session keeps many grants alive with one renew: pass it in
// AcquireOptions.Session or CampaignOptions.Session. It renews itself until
// Close or until it is lost; every Lock and Leadership made in it is lost
// with it.
type Session struct {
	c          *Client
	id, owner  string
	ttl        time.Duration
	margin     time.Duration
	renewEvery time.Duration

	mu        sync.Mutex
	deadline  time.Time // client-side: last successful send + ttl
	expiresAt time.Time
	timer     *time.Timer
	err       error
	lost      chan struct{}

	stop context.CancelFunc
	done chan struct{}
}

type sessionJSON struct {
	SessionID string `json:"session_id"`
	Owner     string `json:"owner"`
	TTLms     int64  `json:"ttl_ms"`
	ExpiresAt string `json:"expires_at"`
}

// OpenSession opens a session that renews itself every opts.RenewEvery.
// Errors: ErrUnavailable after the retries; ctx's error; an *Error (such as
// 501 not_supported on a backend without sessions). A lost reply leaves a
// session nobody renews: it ends at its TTL, holding nothing.
func (c *Client) OpenSession(ctx context.Context, opts SessionOptions) (*Session, error) {
	body := map[string]any{"owner": opts.Owner}
	if opts.TTL > 0 {
		body["ttl_ms"] = ms(opts.TTL)
	}
	var out sessionJSON
	sent, err := c.retry(ctx, http.MethodPost, "/v1/sessions", body, &out)
	if err != nil {
		return nil, err
	}
	s := &Session{c: c, id: out.SessionID, owner: out.Owner, ttl: time.Duration(out.TTLms) * time.Millisecond,
		margin: opts.Margin, renewEvery: opts.RenewEvery, lost: make(chan struct{}), done: make(chan struct{})}
	if s.renewEvery <= 0 || s.renewEvery >= s.ttl {
		s.renewEvery = s.ttl / 3
	}
	s.mu.Lock()
	s.extendLocked(sent, out)
	s.mu.Unlock()
	life, stop := context.WithCancel(context.Background())
	s.stop = stop
	go s.renewLoop(life)
	return s, nil
}

// ID is the session's capability; keep it secret.
func (s *Session) ID() string { return s.id }

// Owner is the session's owner.
func (s *Session) Owner() string { return s.owner }

// TTL is the session's length.
func (s *Session) TTL() time.Duration { return s.ttl }

// Deadline is the client's bound for the session and every grant in it:
// when the last successful open or renew was sent, plus the TTL.
func (s *Session) Deadline() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.deadline
}

// ExpiresAt is the server's last stated expiry (its clock).
func (s *Session) ExpiresAt() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.expiresAt
}

// Lost is closed when the session can no longer be trusted: a renew was
// refused, its deadline (minus Margin) passed, or it was closed.
func (s *Session) Lost() <-chan struct{} { return s.lost }

// Err is nil while the session holds, and why it was lost afterwards
// (matching ErrSessionExpired, or ErrReleased after Close).
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *Session) extendLocked(sent time.Time, out sessionJSON) {
	if s.err != nil {
		return
	}
	s.deadline = sent.Add(time.Duration(out.TTLms) * time.Millisecond)
	s.expiresAt, _ = time.Parse(time.RFC3339Nano, out.ExpiresAt)
	if s.timer != nil {
		s.timer.Stop()
	}
	s.timer = time.AfterFunc(time.Until(s.deadline.Add(-s.margin)), func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.err == nil && !time.Now().Before(s.deadline.Add(-s.margin)) {
			s.loseLocked(fmt.Errorf("%w: session deadline passed without a successful renew", ErrSessionExpired))
		}
	})
}

func (s *Session) loseLocked(err error) {
	if s.err != nil {
		return
	}
	s.err = err
	if s.timer != nil {
		s.timer.Stop()
	}
	close(s.lost)
}

// Renew renews the session now (its loop does this on its own). A refusal
// (ErrSessionExpired) closes Lost.
func (s *Session) Renew(ctx context.Context) error {
	s.mu.Lock()
	err, deadline := s.err, s.deadline
	s.mu.Unlock()
	if err != nil {
		return err
	}
	rctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var out sessionJSON
	sent, err := s.c.retry(rctx, http.MethodPost, "/v1/sessions/renew", map[string]any{"session_id": s.id, "ttl_ms": ms(s.ttl)}, &out)
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case err == nil:
		s.extendLocked(sent, out)
	case errors.Is(err, ErrSessionExpired):
		s.loseLocked(err)
	}
	return err
}

func (s *Session) renewLoop(ctx context.Context) {
	defer close(s.done)
	next := time.Now().Add(s.renewEvery)
	for {
		t := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-s.lost:
			t.Stop()
			return
		case <-t.C:
		}
		err := s.Renew(ctx)
		switch {
		case err == nil:
			next = time.Now().Add(s.renewEvery)
		case errors.Is(err, ErrSessionExpired), ctx.Err() != nil:
			return
		default:
			next = time.Now().Add(min(max(s.ttl/20, 10*time.Millisecond), time.Second))
		}
	}
}

// Close stops renewal and ends the session: the server releases every grant
// made in it at once. It closes Lost (Err then matches ErrReleased); it
// returns an error matching ErrSessionExpired when the session was already
// over.
func (s *Session) Close(ctx context.Context) error {
	s.stop()
	<-s.done
	_, err := s.c.retry(ctx, http.MethodPost, "/v1/sessions/close", map[string]any{"session_id": s.id}, nil)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil || errors.Is(err, ErrSessionExpired) {
		s.loseLocked(ErrReleased)
	}
	return err
}

// follow is the renew of a grant made in s: no request (the session renews
// itself), only the session's deadline, or the session's loss as the
// grant's.
func (s *Session) follow(g Grant) func(context.Context) (Grant, error) {
	return func(context.Context) (Grant, error) {
		if err := s.Err(); err != nil {
			return Grant{}, fmt.Errorf("%w: its session is over: %w", ErrLeaseExpired, err)
		}
		g.Deadline, g.ExpiresAt = s.Deadline(), s.ExpiresAt()
		return g, nil
	}
}
