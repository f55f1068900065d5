package backend

import (
	"context"
	"fmt"
	"time"
)

// FeatureRWLocks names read-write locks in GET /v1/capabilities, as
// Unsupported keys them.
const FeatureRWLocks = "rwlocks"

// The modes of a read-write lock grant.
const (
	ModeRead  = "read"
	ModeWrite = "write"
)

// RWLocker is implemented by backends that keep fair read-write locks. It is
// an optional capability, found by type assertion; a backend without it
// answers 501 not_supported on the rwlock routes.
type RWLocker interface {
	RWLocks() RWLocks
}

// RWLocks keeps fair read-write locks, in their own namespace (an rwlock
// "x" and a lock "x" never meet).
//
// Both modes wait in ONE FIFO queue per key. A reader is granted when no
// writer is ahead of it in the queue, whether that writer holds or waits; a
// writer is granted only at the head of the queue, when nobody holds. So a
// queued writer blocks every later reader (writers are never starved by a
// stream of readers), and consecutive readers are granted together.
//
// Each reader has its own lease (lease id, deadline, renewals): one reader
// expiring or releasing never shortens or ends another's. Expiry follows
// the clock policy of locks (lease.Clock): a holder counts on its grant
// until its deadline, anyone else treats it as gone once it is overdue, and
// an expired grant frees its place with no lockd alive.
//
// Tokens are monotone by mode: a write token is greater than every token of
// the key granted before it (read or write); a read token is greater than
// every token of the writers granted before it. Readers are unordered among
// themselves. A resource fences writes by refusing a token lower than the
// highest it has seen.
//
// There is no upgrade from read to write (two readers upgrading would wait
// for each other for ever) and no re-entrancy: a second acquire by the same
// caller is a new waiter in the queue like any other.
//
// A waiter that leaves the queue (its wait ran out, its ctx ended) leaves no
// trace; a writer that leaves wakes the readers queued behind it, which are
// then granted if no other writer is ahead of them.
type RWLocks interface {
	// Acquire queues req.Mode for req.Key and returns the grant once the
	// rules above allow it, waiting up to req.Wait.
	//
	// Errors: ErrHeld (as *RWHeldError, carrying the holders when they
	// could be read) when not granted within req.Wait; ErrSessionExpired
	// when req.Session is over; ErrUnavailable; ctx's error when ctx ends
	// first, in which case the waiter has left the queue.
	//
	// Waiting is woken by the store's notification on the nearest entry
	// that blocks the waiter, or by a timer at that entry's known expiry,
	// never by polling.
	Acquire(ctx context.Context, req RWAcquireRequest) (RWGrant, error)

	// Renew extends an unexpired grant (either mode) to ttl from now (0:
	// its current TTL), keeping its token and mode; never resurrects.
	//
	// Errors: ErrLeaseExpired (expired, released, still waiting, foreign,
	// unknown); ErrSessionBound; ErrUnavailable.
	Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (RWGrant, error)

	// Release ends a grant (either mode) and wakes the waiters it blocked.
	//
	// Errors: ErrLeaseExpired as for Renew; ErrUnavailable.
	Release(ctx context.Context, key, leaseID string) error

	// Inspect shows the unexpired holders of key and how many readers and
	// writers wait behind them. An unknown key is simply free.
	Inspect(ctx context.Context, key string) (RWState, error)

	// Features says how the backend keeps read-write locks.
	Features() RWFeatures
}

// RWFeatures describe a backend's read-write locks in GET /v1/capabilities.
type RWFeatures struct {
	// Fair: one FIFO queue for both modes, as RWLocks describes.
	Fair bool `json:"fair"`
	// Wakeup is how waiters learn that their blocker left: "watch" (the
	// store notifies) or "pubsub".
	Wakeup string `json:"wakeup"`
	// Sessions: an acquire may name a session (AcquireRequest.Session) on
	// a backend that also keeps sessions. Without it, such an acquire is
	// refused before it reaches the backend.
	Sessions bool `json:"sessions"`
}

// RWAcquireRequest asks for a read-write lock in Mode (ModeRead or
// ModeWrite); the other fields are as for a lock (Idempotency is honoured
// only by backends that say so in their RWFeatures; none does yet).
type RWAcquireRequest struct {
	AcquireRequest
	Mode string
}

// RWGrant is a held read-write lock: a lock grant plus its mode.
type RWGrant struct {
	Grant
	Mode string
}

// RWHolder is one holder of a read-write lock as shown to others.
type RWHolder struct {
	Mode string
	Holder
}

// RWState is what Inspect shows of one key.
type RWState struct {
	Key string
	// Mode is ModeRead or ModeWrite while held, empty while free.
	Mode string
	// Holders are the unexpired holders, in queue order: one writer, or
	// one or more readers.
	Holders []RWHolder
	// WaitingReaders and WaitingWriters count the queued acquirers.
	WaitingReaders, WaitingWriters int
	// DelayedUntil is the end of a lock-delay in force (zero: none): of
	// an expired writer (delaying both modes) or reader (delaying writers).
	DelayedUntil time.Time
}

// RWHeldError is returned (wrapping ErrHeld) when an rwlock acquire gives
// up. Holders is empty when nobody held at the give-up (the waiter was
// behind other waiters) or they could not be read.
type RWHeldError struct {
	Key     string
	Holders []RWHolder
	// Delay is set when a lock-delay kept the acquire out.
	Delay *Delay
}

func (e *RWHeldError) Error() string {
	if len(e.Holders) == 0 {
		return fmt.Sprintf("rwlock %q held", e.Key)
	}
	return fmt.Sprintf("rwlock %q held in %s mode by %d holder(s), first %q (token %d)", e.Key, e.Holders[0].Mode, len(e.Holders), e.Holders[0].Owner, e.Holders[0].Token)
}

func (e *RWHeldError) Unwrap() error { return ErrHeld }
