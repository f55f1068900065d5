package redis

// Lock-delay (backend.LockDelayer) on Redis's own clock: a grant asked with
// a delay d stores d in its record, and its key's expiry outlives its
// deadline by d. Every script reads a grant past its deadline but not past
// deadline + d as "delayed": not a holder, not free — nothing is granted in
// its place, waiters keep their places and wake by a timer at its end (the
// acquire script returns it). A release deletes the record, which lifts
// the delay; a release or renew of a delayed grant is refused and lifts
// nothing. A session's hash outlives its deadline by backend.MaxLockDelay,
// so that its grants' delays start from the session's last deadline.

import "github.com/lockd/lockd/backend"

var _ backend.LockDelayer = (*Backend)(nil)

// LockDelay implements backend.LockDelayer.
func (b *Backend) LockDelay() backend.LockDelayFeatures {
	return backend.LockDelayFeatures{Locks: true, Elections: true, Semaphores: true, RWLocks: true}
}

// noLockDelay are the primitives this backend does not delay, and why:
// none.
var noLockDelay = map[string]string{}

// noLockDelays is noLockDelay keyed as Unsupported keys it.
func noLockDelays() map[string]string {
	u := map[string]string{}
	for p, why := range noLockDelay {
		u[backend.LockDelayFeature(p)] = why
	}
	return u
}
