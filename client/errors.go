package client

import (
	"errors"
	"fmt"
	"time"
)

// Sentinel errors, matched with errors.Is.
var (
	// ErrHeld: the lock was not granted within the wait. The *Error carries
	// the holder when the server knows it.
	ErrHeld = errors.New("lockd: lock held")
	// ErrLeaseExpired: the lease no longer holds the lock (expired, released,
	// or never existed), as the server said with 410, or as the client knows
	// because its own deadline for the lease has passed.
	ErrLeaseExpired = errors.New("lockd: lease expired")
	// ErrUnavailable: the server's backend was unreachable (503).
	ErrUnavailable = errors.New("lockd: backend unavailable")
	// ErrLimited: a limit of the server refused the request before it did
	// anything (429: too_many_waiters, too_many_leases, rate_limited). The
	// *Error's RetryAfter says when to come back. Calls retry rate_limited
	// and too_many_waiters on their own; too_many_leases needs the caller
	// to release a lease first.
	ErrLimited = errors.New("lockd: limited")
	// ErrOutcomeUnknown: an acquire reached the server but its reply was
	// lost (connection reset, timeout), and retrying did not tell. The
	// server may have granted the lock to a lease this client never
	// learned: nobody else can hold the key while that lease runs, and it
	// expires after its TTL because nobody renews it. Acquires carry an
	// Idempotency-Key and are retried, so this is rare: it needs every
	// retry's reply lost too (then an acquire with the same
	// AcquireOptions.IdempotencyKey fetches the grant), or a server whose
	// backend keeps no idempotency records (none of lockd's own),
	// where such an acquire is not retried at all (see Client.AcquireLease).
	ErrOutcomeUnknown = errors.New("lockd: outcome unknown")
	// ErrReleased is Lock.Err after Lock.Release.
	ErrReleased = errors.New("lockd: lock released")
)

// LockDelay is a lock-delay in force (see AcquireOptions.LockDelay).
type LockDelay struct {
	Until        time.Time
	ExpiredToken uint64
}

// Error is an error reply of the server (application/problem+json).
type Error struct {
	Status int    // HTTP status
	Code   string // machine-readable code, e.g. "lock_held", "lease_expired"
	Type   string
	Title  string
	Detail string
	// Holder is the current holder for a "lock_held" reply, when known.
	Holder *Holder
	// Leader is the election's leader for a refused campaign, when known.
	Leader *Leader
	// LockDelay is set on a "lock_held" reply when a lock-delay kept the
	// acquire out: the grant of ExpiredToken expired, and nothing is
	// granted until Until.
	LockDelay *LockDelay
	// RetryAfter is the server's Retry-After, when it sent one.
	RetryAfter time.Duration
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("lockd: %d %s", e.Status, e.Code)
	if e.Detail != "" {
		// The server's detail already says what there is to say.
		return msg + ": " + e.Detail
	}
	if e.Title != "" {
		msg += ": " + e.Title
	}
	if e.Holder != nil {
		msg += fmt.Sprintf(" (held by %q, token %d, until %s)", e.Holder.Owner, e.Holder.Token, e.Holder.ExpiresAt.Format(time.RFC3339Nano))
	}
	if e.LockDelay != nil {
		msg += fmt.Sprintf(" (lock-delay after token %d expired, until %s)", e.LockDelay.ExpiredToken, e.LockDelay.Until.Format(time.RFC3339Nano))
	}
	if e.Leader != nil {
		msg += fmt.Sprintf(" (led by %q, term %d, value %q, until %s)", e.Leader.Owner, e.Leader.Term, e.Leader.Value, e.Leader.ExpiresAt.Format(time.RFC3339Nano))
	}
	return msg
}

// Is maps the server's codes (and, failing a code, its statuses) onto the
// sentinels.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrHeld:
		return e.Code == "lock_held" || e.Code == "" && e.Status == 409
	case ErrLeaseExpired:
		return e.Code == "lease_expired" || e.Code == "" && e.Status == 410
	case ErrUnavailable:
		return e.Code == "backend_unavailable" || e.Status == 503
	case ErrLimited:
		return e.Status == 429
	case ErrSessionExpired:
		return e.Code == "session_expired"
	}
	return false
}
