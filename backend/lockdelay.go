package backend

import (
	"fmt"
	"time"
)

// Lock-delay (Chubby's and Consul's): a pause after a holder dies before
// anyone else is let in, so that a holder that is only slow — paused,
// partitioned, its last writes still in flight — is not overlapped by its
// successor at once.
//
// A grant asks for it with LockDelay (AcquireRequest, SemaphoreRequest,
// CampaignRequest; a read-write lock through its AcquireRequest). When a
// grant made with LockDelay d ends by expiry — its deadline passed; it was
// not released, resigned or closed — nothing is granted in its place until
// its deadline + d, judged as every other deadline of the backend (by the
// store's clock, or under lease.Clock: Overdue(deadline + d) for anyone
// but the holder). Its place is:
//   - a lock, an election: the key;
//   - a semaphore: the expired permit's slot (the other slots go on);
//   - a read-write lock: the writer side — an expired writer delays
//     readers and writers, an expired reader delays writers only.
//
// A release (resign, session close) of an unexpired grant lifts the delay
// at once. A renew or release after expiry is refused (ErrLeaseExpired)
// and does not lift it. The delay is state in the store: it holds with the
// granting lockd dead, and waiters keep their place in line through it,
// woken by a timer at its end.
//
// A delayed grant is not a holder: it is not shown in Holder, Holders or
// Leader, but in the DelayedUntil and Delayed fields of inspection and in
// the Delay of a refusal.

// MaxLockDelay is the longest lock-delay an acquire may ask for.
const MaxLockDelay = 60 * time.Second

// Delay is a lock-delay in force: nothing is granted until Until, because
// the grant of ExpiredToken expired.
type Delay struct {
	Until        time.Time
	ExpiredToken uint64
}

// SlotDelay is a lock-delay in force on one slot of a semaphore.
type SlotDelay struct {
	Slot int
	Delay
}

// LockDelayer is implemented by backends that keep lock-delays. It is an
// optional capability, found by type assertion. A primitive a backend cannot
// delay is false in its features, with the reason in its Unsupported map
// under LockDelayFeature(primitive); the API answers 501 to a lock-delay
// asked of it.
type LockDelayer interface {
	LockDelay() LockDelayFeatures
}

// LockDelayFeatures say which primitives a backend delays, in GET
// /v1/capabilities.
type LockDelayFeatures struct {
	Locks      bool `json:"locks"`
	Semaphores bool `json:"semaphores"`
	RWLocks    bool `json:"rwlocks"`
	Elections  bool `json:"elections"`
}

// FeatureLockDelay names lock-delay in GET /v1/capabilities.
const FeatureLockDelay = "lock_delay"

// The primitives a lock-delay applies to, as LockDelayFeature takes them.
const (
	PrimitiveLocks      = "locks"
	PrimitiveSemaphores = "semaphores"
	PrimitiveRWLocks    = "rwlocks"
	PrimitiveElections  = "elections"
)

// LockDelayFeature is the Unsupported key saying why primitive (one of the
// Primitive names) is not delayed: "lock_delay.<primitive>".
func LockDelayFeature(primitive string) string {
	return FeatureLockDelay + "." + primitive
}

// Has says whether primitive (one of the Primitive names) is delayed.
func (f LockDelayFeatures) Has(primitive string) bool {
	switch primitive {
	case PrimitiveLocks:
		return f.Locks
	case PrimitiveSemaphores:
		return f.Semaphores
	case PrimitiveRWLocks:
		return f.RWLocks
	case PrimitiveElections:
		return f.Elections
	}
	panic(fmt.Sprintf("backend: unknown primitive %q", primitive))
}

// LockDelaysOf is b's lock-delay features; the zero value (nothing
// delayed) when b is not a LockDelayer.
func LockDelaysOf(b Backend) LockDelayFeatures {
	if d, ok := b.(LockDelayer); ok {
		return d.LockDelay()
	}
	return LockDelayFeatures{}
}
