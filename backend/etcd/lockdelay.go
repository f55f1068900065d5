package etcd

// Lock-delay (backend.LockDelayer): the record of a grant carries its delay
// (record.LD); when the grant expires the record is not removed until its
// deadline plus the delay is overdue (record.removable), and until then it
// counts as delayed: not a holder, yet still in its place, so nothing is
// granted there (a lock's or an election's head, a semaphore's slot, an
// rwlock's entry, which blocks whom it blocked while held). Its etcd lease
// outlives the delay (holderRecord). Waiters keep their place and set their
// timer at the delay's end. A release of a valid grant deletes it, which
// lifts the delay; one after expiry is refused and deletes nothing.

import "github.com/lockd/lockd/backend"

var _ backend.LockDelayer = (*Backend)(nil)

// LockDelay implements backend.LockDelayer: every primitive is delayed.
func (b *Backend) LockDelay() backend.LockDelayFeatures {
	return backend.LockDelayFeatures{Locks: true, Semaphores: true, RWLocks: true, Elections: true}
}
