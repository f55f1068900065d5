package backend

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// FeatureSemaphores names counting semaphores in GET /v1/capabilities (see
// Unsupported).
const FeatureSemaphores = "semaphores"

// MaxPermits is the largest number of permits a semaphore may have.
const MaxPermits = 10000

// ErrPermitsMismatch: an acquire asked for a semaphore of another size than
// the live one (the sizes its unexpired permits and waiters carry). The
// error is usually a *PermitsMismatchError naming the current size. Nothing
// was done.
var ErrPermitsMismatch = errors.New("permits mismatch")

// Semaphorer is implemented by backends that keep counting semaphores. It is
// an optional capability, found by type assertion; a backend without it
// answers 501 not_supported on the semaphore routes.
type Semaphorer interface {
	Semaphores() Semaphores
}

// Semaphores keeps counting semaphores, in their own namespace (a semaphore
// "x" and a lock "x" never meet).
//
// A semaphore of key K and size N hands out permits, one per acquire:
//   - At most N unexpired permits exist at once, across every replica over
//     the store, under the clock policy of locks (lease.Clock): a holder
//     counts on its permit until its deadline, anyone else frees the slot
//     once the deadline is Overdue.
//   - Each permit has a slot in 0..N-1, and no two unexpired permits share
//     one.
//   - Each permit has its own lease id and fencing token. Tokens strictly
//     increase over all permits of K (across restarts and replicas), and so
//     per slot: a resource fences per (key, slot), refusing a token lower
//     than the highest it has seen for that slot.
//   - Waiters are served in arrival order (FIFO, unless Features says
//     otherwise): the head of the line is granted as soon as any slot is
//     free, and nobody behind it is granted first.
//   - N is carried by the live permits and waiters: an acquire with another
//     size fails with ErrPermitsMismatch; a semaphore with no live permit
//     and no waiter takes the size of the next acquire.
//   - Expiry is state in the store: a slot whose permit ran out is free
//     even when no lockd that granted it is alive. A renew never
//     resurrects an expired permit.
//   - A permit may live in a session (SemaphoreRequest.Session) exactly as
//     a lock grant does (see Sessions), when Features says so.
type Semaphores interface {
	// Acquire grants one permit of req.Key once a slot is free and nobody
	// is ahead in line, waiting up to req.Wait.
	//
	// Errors: ErrHeld (as *SemaphoreHeldError, carrying the holders when
	// they could be read) when not granted within req.Wait;
	// ErrPermitsMismatch (as *PermitsMismatchError) when req.Permits
	// differs from the live semaphore's; ErrSessionExpired when
	// req.Session is over (also while waiting); ErrUnavailable; ctx's
	// error when ctx ends first, in which case the waiter has left the
	// line and nothing is left behind.
	//
	// Waiting is woken by the store's own notification or by a timer at
	// the earliest holder's known expiry, never by polling.
	Acquire(ctx context.Context, req SemaphoreRequest) (Permit, error)

	// Renew extends an unexpired permit to ttl from now (0: its current
	// TTL), keeping its slot and token; it never resurrects.
	//
	// Errors: ErrLeaseExpired when leaseID is not an unexpired permit of
	// key (expired, released, foreign, unknown — indistinguishable);
	// ErrSessionBound when the permit lives in an unexpired session;
	// ErrUnavailable.
	Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (Permit, error)

	// Release frees the permit's slot; the head of the line is woken.
	//
	// Errors: ErrLeaseExpired as for Renew (a stale or foreign lease
	// never frees another holder's slot); ErrUnavailable.
	Release(ctx context.Context, key, leaseID string) error

	// Inspect shows the semaphore's size, its unexpired permits (ordered
	// by slot, never with their lease ids) and how many acquirers wait.
	// An unknown key is an empty semaphore of size 0.
	Inspect(ctx context.Context, key string) (SemaphoreState, error)

	// Features says how the backend keeps semaphores.
	Features() SemaphoreFeatures
}

// SemaphoreFeatures describe a backend's semaphores in GET /v1/capabilities.
type SemaphoreFeatures struct {
	// FIFO: waiters are served in arrival order.
	FIFO bool `json:"fifo"`
	// Idempotency: the backend honours SemaphoreRequest.Idempotency as
	// Idempotent does for locks. Without it the API refuses an
	// Idempotency-Key on semaphores.
	Idempotency bool `json:"idempotency"`
	// Sessions: a permit may live in a session (SemaphoreRequest.Session).
	// Without it the API refuses session_id on semaphores with 501, and
	// Acquire with one fails with ErrSessionExpired.
	Sessions bool `json:"sessions"`
}

// SemaphoreRequest asks for one permit.
type SemaphoreRequest struct {
	Key     string
	Permits int           // the semaphore's size, 1..MaxPermits
	Owner   string        // free text shown in inspection; may be empty
	TTL     time.Duration // the permit's lease, counted from the grant; 0 with Session
	// Session, when set, is the session the permit lives in instead of a
	// TTL of its own, as for AcquireRequest.Session.
	Session string
	// Wait is how long to wait in line. Zero means a single try.
	Wait time.Duration
	// Idempotency, honoured only when Features().Idempotency is set.
	Idempotency Idempotency
	// LockDelay as for AcquireRequest.LockDelay: it delays the permit's
	// slot.
	LockDelay time.Duration
}

// Permit is a held permit: a Grant (key, lease id, token, owner, TTL,
// deadline) plus its slot and the semaphore's size.
type Permit struct {
	Grant
	Slot    int
	Permits int
}

// SemaphoreHolder is one unexpired permit as others see it (never its lease
// id).
type SemaphoreHolder struct {
	Slot      int
	Owner     string
	Token     uint64
	ExpiresAt time.Time
}

// SemaphoreState is what Inspect shows of one semaphore.
type SemaphoreState struct {
	Key string
	// Permits is the live size (0 when nothing holds or waits).
	Permits int
	Holders []SemaphoreHolder // ordered by slot
	Waiters int
	// Delayed are the slots under a lock-delay, ordered by slot.
	Delayed []SlotDelay
}

// SemaphoreHeldError is returned (wrapping ErrHeld) when an acquire gives
// up. Holders is nil when they could not be read.
type SemaphoreHeldError struct {
	Key     string
	Permits int
	Holders []SemaphoreHolder
	// Delay is the soonest-ending lock-delay among the slots that kept
	// the acquire out, when one did.
	Delay *Delay
}

func (e *SemaphoreHeldError) Error() string {
	return fmt.Sprintf("semaphore %q: all %d permits held", e.Key, e.Permits)
}

func (e *SemaphoreHeldError) Unwrap() error { return ErrHeld }

// PermitsMismatchError is returned (wrapping ErrPermitsMismatch) when an
// acquire's size differs from the live semaphore's, Permits.
type PermitsMismatchError struct {
	Key     string
	Permits int
}

func (e *PermitsMismatchError) Error() string {
	return fmt.Sprintf("semaphore %q has %d permits", e.Key, e.Permits)
}

func (e *PermitsMismatchError) Unwrap() error { return ErrPermitsMismatch }
