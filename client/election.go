package client

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// Leader is an election's leader as others see it.
type Leader struct {
	Term      uint64
	Owner     string
	Value     string
	ExpiresAt time.Time
}

type leaderJSON struct {
	Term      uint64 `json:"term"`
	Owner     string `json:"owner"`
	Value     string `json:"value"`
	ExpiresAt string `json:"expires_at"`
}

func (l *leaderJSON) leader() *Leader {
	if l == nil {
		return nil
	}
	t, _ := time.Parse(time.RFC3339Nano, l.ExpiresAt)
	return &Leader{Term: l.Term, Owner: l.Owner, Value: l.Value, ExpiresAt: t}
}

type leadershipJSON struct {
	Name      string `json:"name"`
	LeaseID   string `json:"lease_id"`
	Term      uint64 `json:"term"`
	Owner     string `json:"owner"`
	Value     string `json:"value"`
	TTLms     int64  `json:"ttl_ms"`
	ExpiresAt string `json:"expires_at"`
}

// grant is l as a lease: the term is its token.
func (l leadershipJSON) grant(sent time.Time, ttl time.Duration) Grant {
	return grantJSON{Key: l.Name, LeaseID: l.LeaseID, Token: l.Term, Owner: l.Owner, TTLms: l.TTLms, ExpiresAt: l.ExpiresAt}.grant(sent, ttl)
}

func electionPath(name, op string) string {
	return "/v1/elections/" + url.PathEscape(name) + "/" + op
}

// CampaignOptions are the parameters of a campaign. Zero values take the
// server's defaults (TTL 15 s, a single try).
type CampaignOptions struct {
	TTL   time.Duration // lease length; 100 ms .. 1 h
	Wait  time.Duration // how long to wait in line; 0 = one try
	Owner string        // free text shown to others (≤ 256 bytes)
	Value string        // what the leader tells others (≤ 4 KiB), e.g. its address
	// Margin and RenewEvery are as for AcquireOptions.
	Margin     time.Duration
	RenewEvery time.Duration
	// Session, as for AcquireOptions: the leadership lives in it.
	Session *Session
	// LockDelay, as for AcquireOptions: after a leader expires, nobody is
	// elected until its deadline plus LockDelay.
	LockDelay time.Duration
}

// Leadership is a won election that renews itself until Resign or until it
// is lost. Its embedded Lock gives Lost, Err, Deadline and LeaseID: act as
// leader only before Deadline and while Lost is open, and pass Term to what
// you protect.
type Leadership struct {
	*Lock
	mu    sync.Mutex
	value string
}

// Term is the leadership's fencing token: greater than every earlier
// leader's, the same across proclaims and renewals.
func (l *Leadership) Term() uint64 { return l.Token() }

// Name is the election's name.
func (l *Leadership) Name() string { return l.Key() }

// Value is the last value this leader proclaimed (or campaigned with).
func (l *Leadership) Value() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.value
}

// Campaign waits up to opts.Wait to lead name and returns a Leadership that
// renews itself every opts.RenewEvery (default TTL/3).
//
// Errors: ErrHeld (an *Error whose Leader is the current leader, when
// known) when not leader within the wait; ErrOutcomeUnknown when the
// request reached the server and the reply was lost (campaigns carry no
// Idempotency-Key, so such a campaign is not retried: a leadership this
// client never saw may run until its TTL ends); ErrUnavailable; ctx's
// error.
func (c *Client) Campaign(ctx context.Context, name string, opts CampaignOptions) (*Leadership, error) {
	out, lk, err := callLease[leadershipJSON](ctx, c, leaseCall{
		key: name, path: func(op string) string { return electionPath(name, op) }, acquire: "campaign", end: "resign",
		body: lockDelayField(map[string]any{"owner": opts.Owner, "value": opts.Value}, opts.LockDelay),
		ttl:  opts.TTL, wait: opts.Wait, session: opts.Session, margin: opts.Margin, renewEvery: opts.RenewEvery,
		lost: "a leadership", late: fmt.Sprintf("campaign %q", name),
	})
	if err != nil {
		return nil, err
	}
	l := &Leadership{Lock: lk, value: out.Value}
	l.start()
	return l, nil
}

// Proclaim tells others a new value, in the same term. A refusal
// (ErrLeaseExpired: this is no longer the leader) closes Lost.
func (l *Leadership) Proclaim(ctx context.Context, value string) error {
	if err := l.Err(); err != nil {
		return err
	}
	rctx, cancel := context.WithDeadline(ctx, l.Deadline())
	defer cancel()
	var r leadershipJSON
	_, err := l.c.retry(rctx, http.MethodPost, electionPath(l.Key(), "proclaim"), map[string]any{"lease_id": l.LeaseID(), "value": value}, &r)
	if err != nil {
		if isCode(err, "lease_expired") {
			l.Lock.mu.Lock()
			l.loseLocked(err)
			l.Lock.mu.Unlock()
		}
		return err
	}
	l.mu.Lock()
	l.value = r.Value
	l.mu.Unlock()
	return nil
}

// Resign stops renewal and ends the term at once; the next candidate leads.
// It closes Lost (Err then matches ErrReleased), as Release does.
func (l *Leadership) Resign(ctx context.Context) error { return l.Release(ctx) }
