// Package backend is the contract between lockd's HTTP service and the stores
// that hold lock state (etcd, ZooKeeper, Redis, Redlock).
//
// Every promise of the contract is written on the method that keeps it, and
// backend/backendtest checks each promise against every implementation on a
// real server. Nothing above this package imports a client library, and no
// implementation may keep state that matters only in process memory: several
// lockd replicas over one store must behave as one service, and a restarted
// lockd must honour the grants it made before.
//
// Inputs are validated by the caller (keys, TTL ranges, owner length); a
// backend may assume them valid.
package backend

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Sentinel errors. Implementations wrap native errors with %w around one of
// these so that callers can map them with errors.Is.
var (
	// ErrHeld: the lock was not granted within the wait; somebody else holds
	// it or is ahead in the queue. The error is usually a *HeldError carrying
	// the holder.
	ErrHeld = errors.New("lock held")
	// ErrLeaseExpired: the lease no longer holds the lock: it expired, was
	// released, or never existed. A renew or release with it changes nothing.
	ErrLeaseExpired = errors.New("lease expired")
	// ErrUnavailable: the store could not be reached or did not answer in
	// time. The operation left no half-made state the caller must clean up
	// (a half-made grant, if any, expires or is removed by the backend).
	ErrUnavailable = errors.New("backend unavailable")
	// ErrIdempotencyKeyReused: an acquire carried the idempotency key of an
	// earlier acquire with a different fingerprint (another request under
	// the same key). Nothing was done.
	ErrIdempotencyKeyReused = errors.New("idempotency key reused")
)

// HeldError is returned (wrapping ErrHeld) when an acquire gives up. Holder
// is nil when the lock was freed between the last try and the give-up, or the
// backend could not read it.
type HeldError struct {
	Key    string
	Holder *Holder
}

func (e *HeldError) Error() string {
	if e.Holder == nil {
		return fmt.Sprintf("lock %q held", e.Key)
	}
	return fmt.Sprintf("lock %q held by %q (token %d)", e.Key, e.Holder.Owner, e.Holder.Token)
}

func (e *HeldError) Unwrap() error { return ErrHeld }

// Holder describes the current holder of a lock, as shown to other callers.
// It never carries the lease id: that is the holder's capability.
type Holder struct {
	Owner     string
	Token     uint64
	ExpiresAt time.Time
}

// AcquireRequest asks for a lock.
type AcquireRequest struct {
	Key   string
	Owner string        // free text shown in inspection; may be empty
	TTL   time.Duration // lease length, counted from the grant
	// Wait is how long to queue for the lock. Zero means a single try.
	// Waiters are served in arrival order (FIFO) unless the backend's
	// conformance run declares otherwise.
	Wait time.Duration
	// Idempotency, when its Key is set, makes a retry of this acquire safe;
	// see Idempotent.
	Idempotency Idempotency
}

// Idempotency identifies one logical acquire across its retries. The HTTP
// layer builds both fields; a backend stores and compares them and never
// interprets them.
type Idempotency struct {
	// Key names the acquire: a hash of the caller, the lock key and the
	// client's Idempotency-Key, in [A-Za-z0-9_-], at most 64 bytes. Empty:
	// the acquire is not idempotent.
	Key string
	// Fingerprint is a hash of the fields that define the grant (owner,
	// TTL; not Wait): a retry must carry the same.
	Fingerprint string
}

// Idempotent is implemented by backends that honour
// AcquireRequest.Idempotency. For such a backend, an acquire with a Key is
// recorded in the same atomic store operation that queues it or grants it
// (so the record holds across replicas and restarts), and a later acquire
// with the same Key:
//   - with another Fingerprint fails with ErrIdempotencyKeyReused;
//   - while the recorded grant holds, returns that same grant (LeaseID,
//     Token, ExpiresAt) without changing it;
//   - while the recorded acquire still waits, waits in its place (FIFO) and
//     returns the grant when it comes;
//   - once the recorded grant ended (released, expired), fails with
//     ErrLeaseExpired.
//
// An acquire that was refused (ErrHeld, ErrUnavailable, ctx's error) leaves
// no record: a retry runs afresh. Records are kept at least as long as
// IdempotencyWindow after their first use.
type Idempotent interface {
	Backend
	// IdempotentAcquire is a marker: the backend honours Idempotency.
	IdempotentAcquire()
}

// IdempotencyWindow is how long a backend keeps an idempotency record at
// least, counted from the acquire that made it.
const IdempotencyWindow = time.Hour

// Grant is a held lock.
type Grant struct {
	Key string
	// LeaseID is the capability to renew and release: an opaque string of
	// URL-safe characters ([A-Za-z0-9._~-], at most 128 bytes) holding at
	// least 128 random bits. Nobody can renew or release without it.
	LeaseID string
	// Token is the fencing token: strictly greater than every token ever
	// granted for Key before, across restarts and replicas (within the
	// backend's stated limits).
	Token     uint64
	Owner     string
	TTL       time.Duration
	ExpiresAt time.Time
	// Replayed is set when an idempotent retry got the grant an earlier
	// attempt with the same key made (see Idempotent).
	Replayed bool
}

// LockState is what inspection shows of one key.
type LockState struct {
	Key     string
	Held    bool
	Holder  *Holder // nil when not held
	Waiters int     // queued acquirers, when the backend can count them
}

// Backend holds lock state. All methods are safe for concurrent use.
// Every blocking method takes ctx first and returns promptly with an error
// wrapping ctx.Err() when it is cancelled.
type Backend interface {
	// Acquire grants req.Key to the caller when nobody holds an unexpired
	// lease on it, waiting up to req.Wait in FIFO order. The returned grant's
	// TTL starts at the grant; its ExpiresAt is computed from the grant. A
	// backend that declares it (backendtest.Options.ValidityBelowTTL)
	// reports less than req.TTL — what the holder may count on, such as
	// Redlock's validity — never more.
	//
	// Errors: ErrHeld (as *HeldError) when not granted within req.Wait;
	// ErrUnavailable when the store cannot be reached; ctx's error when ctx
	// ends first, in which case the waiter has left the queue and nothing is
	// left behind (if a grant raced with the cancellation, it is released).
	//
	// Waiting is woken by the store's own notification (watch, pub/sub)
	// or by a timer set at the holder's known expiry, never by polling —
	// unless the backend documents otherwise.
	Acquire(ctx context.Context, req AcquireRequest) (Grant, error)

	// Renew extends an unexpired lease to ttl from now, keeping its token;
	// ttl 0 keeps the lease's current TTL. It never resurrects an expired
	// lease.
	//
	// Errors: ErrLeaseExpired when leaseID does not hold key (expired,
	// released, foreign or unknown — indistinguishable to the caller);
	// ErrUnavailable.
	Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (Grant, error)

	// Release frees key if leaseID holds it; the next waiter is woken.
	//
	// Errors: ErrLeaseExpired as for Renew (a foreign or stale lease never
	// releases the true holder); ErrUnavailable.
	Release(ctx context.Context, key, leaseID string) error

	// Inspect shows the key's holder (when its lease is unexpired) and how
	// many acquirers wait. An unknown key is simply not held.
	Inspect(ctx context.Context, key string) (LockState, error)

	// List returns held locks whose keys start with prefix, ordered by key,
	// starting after the key `after` (empty: from the start), at most limit
	// of them. Expired grants not yet removed are left out.
	List(ctx context.Context, prefix, after string, limit int) ([]LockState, error)

	// Ping reports whether the store is reachable (ErrUnavailable if not).
	Ping(ctx context.Context) error

	// Close releases the backend's connections. It never releases locks:
	// their leases run on in the store.
	Close() error
}

// ClockChecker is implemented by backends whose safety depends on the lockd
// replicas' clocks: they write lease deadlines by one replica's clock that
// other replicas enforce by theirs (see lease.Clock). A backend whose leases
// run on the store's own clock does not implement it.
type ClockChecker interface {
	// ClockOffset estimates this replica's clock minus a reference every
	// replica shares. ErrUnavailable when the store cannot be asked.
	ClockOffset(ctx context.Context) (ClockReading, error)
}

// ClockReading is one estimate of a replica's clock offset.
type ClockReading struct {
	// Offset is this replica's clock minus the reference (positive: ahead).
	Offset time.Duration
	// Uncertainty bounds the estimate's error either way (about half a
	// round trip to the reference).
	Uncertainty time.Duration
	// Reference names what the clock was compared with.
	Reference string
	// Peers is how many other replicas the reference was made of, for
	// backends that compare replicas with each other; 0 otherwise.
	Peers int
}

// Hooks lets the service observe what a backend notices on its own. Every
// field may be nil. Backends embed it in their options.
type Hooks struct {
	// OnExpire is called when this backend removes a grant whose lease ran
	// out (a holder that stopped renewing).
	OnExpire func(Expiry)
}

// Expiry is a grant a backend removed because its lease ran out. Key and
// Token name the grant uniquely; there is no lease id: it is the holder's
// capability and not every backend can read it back.
type Expiry struct {
	Key   string
	Owner string
	Token uint64
}

// Expired calls OnExpire when set.
func (h Hooks) Expired(e Expiry) {
	if h.OnExpire != nil {
		h.OnExpire(e)
	}
}
