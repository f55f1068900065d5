package redlock

import "github.com/lockd/lockd/backend"

// Redlock keeps no leader elections, key events or sessions, on purpose:
// their promises are a fenced term, every change delivered in order, and one
// deadline shared by many grants, and a set of independent masters with no
// shared log or clock can keep none of them.
const (
	// NoElections is why Redlock has no elections.
	NoElections = "a term would be a Redlock token, not safe under failures (a master that restarts empty lets a second " +
		"leader form with a smaller term), and with no log on the masters an observer could only poll a majority, missing " +
		"a term that begins and ends between two polls; use redis, etcd or zk for elections"
	// NoWatch is why Redlock has no key events.
	NoWatch = "Redlock's masters keep no log, so a watcher could only poll a majority, missing grants that begin and end " +
		"between two polls, and could replay nothing; use redis, etcd or zk for key events"
	// NoSessions is why Redlock has no sessions.
	NoSessions = "a session would be a second timed record on every master, and each grant's validity would have to be " +
		"re-derived from a majority of sessions and a majority of grants that need not be the same masters, with the " +
		"masters' clocks drifting apart; use etcd for sessions"
	// NoRWLocks is why Redlock has no read-write locks.
	NoRWLocks = "fairness needs one queue of readers and writers, and Redlock's masters share none; shared mode would " +
		"need a reader set on every master, and no majority bounds cleanly when the sets differ from master to master " +
		"(a writer could win a majority that misses a live reader); use etcd or redis for read-write locks"
)

// NoLockDelay is why Redlock delays no primitive after an expiry, by
// primitive (backend.LockDelayFeature keys them in Unsupported).
var NoLockDelay = map[string]string{
	backend.PrimitiveLocks: "not built yet: each master forgets an expired copy at its own PEXPIRE; a delay needs every master to keep " +
		"the expired copy and judge deadline + delay on its own clock, and release, renew, inspect and idempotent retries to tell " +
		"a delayed copy from a live one; use redis, etcd or zk for lock-delay",
	backend.PrimitiveSemaphores: "not built yet: a permit is a slot's Redlock mutex, and Redlock locks have no lock-delay yet",
	backend.PrimitiveRWLocks:    NoRWLocks,
	backend.PrimitiveElections:  NoElections,
}

var (
	_ backend.Unsupported = (*Backend)(nil)
	_ backend.LockDelayer = (*Backend)(nil)
)

// LockDelay implements backend.LockDelayer: nothing is delayed (NoLockDelay
// says why).
func (b *Backend) LockDelay() backend.LockDelayFeatures { return backend.LockDelayFeatures{} }

// Unsupported implements backend.Unsupported.
func (b *Backend) Unsupported() map[string]string {
	u := map[string]string{backend.FeatureElections: NoElections, backend.FeatureEvents: NoWatch, backend.FeatureSessions: NoSessions,
		backend.FeatureRWLocks: NoRWLocks}
	for p, why := range NoLockDelay {
		u[backend.LockDelayFeature(p)] = why
	}
	return u
}
