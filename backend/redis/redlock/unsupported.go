package redlock

import "github.com/lockd/lockd/backend"

// Redlock keeps no leader elections and no key events, on purpose: their
// promises are a fenced term and every change delivered in order, and a set
// of independent masters with no shared log can keep neither.
const (
	// NoElections is why Redlock has no elections.
	NoElections = "a term would be a Redlock token, not safe under failures (a master that restarts empty lets a second " +
		"leader form with a smaller term), and with no log on the masters an observer could only poll a majority, missing " +
		"a term that begins and ends between two polls; use redis, etcd or zk for elections"
	// NoWatch is why Redlock has no key events.
	NoWatch = "Redlock's masters keep no log, so a watcher could only poll a majority, missing grants that begin and end " +
		"between two polls, and could replay nothing; use redis, etcd or zk for key events"
)

var _ backend.Unsupported = (*Backend)(nil)

// Unsupported implements backend.Unsupported.
func (b *Backend) Unsupported() map[string]string {
	return map[string]string{"elections": NoElections, "watch": NoWatch}
}
