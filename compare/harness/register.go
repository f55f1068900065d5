package harness

import (
	"sync"
	"time"
)

// register is the protected resource of the correctness workload: an
// in-process counter that clients read, think about, and write back
// incremented while they believe they hold the lock. It records every write
// with (client, token, time).
//
// Two registers are kept side by side and every critical section touches
// both: the fenced one refuses a token lower than the highest it has
// accepted, the unfenced one accepts everything. One run of the workload
// therefore measures both modes on the same lock history.
type register struct {
	fenced bool

	mu      sync.Mutex
	value   int64
	highest uint64
	writes  []write
	// inside holds the clients between their read and their write, with the
	// deadline of the lease they believe they hold.
	inside map[int]time.Time

	// latest is the number of the most recent grant (see granted): a write
	// made under any other grant is stale.
	latest uint64

	accepted      int64
	staleRejected int64
	staleAccepted int64
	// overlaps counts critical sections entered while another client was
	// inside its own and BOTH leases were unexpired by their holders' own
	// reckoning: a mutual-exclusion violation of the lock service, whatever
	// else happened.
	overlaps int64
	// expiredOverlaps counts overlaps in which at least one of the two
	// leases had run out by its holder's reckoning (a paused holder): the
	// lock did its job; only fencing can save the resource then.
	expiredOverlaps int64
	firstOverlap    string
}

type write struct {
	Client   int
	Token    uint64
	Read     int64
	At       time.Time
	Accepted bool
}

func newRegister(fenced bool) *register {
	return &register{fenced: fenced, inside: map[int]time.Time{}}
}

// granted records that a grant returned to client, and numbers it. From
// then on, a write made under any earlier grant is stale: its holder has
// been superseded, whether or not its lease had run out.
func (r *register) granted() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.latest++
	return r.latest
}

// read starts client's critical section and returns the value it sees.
// deadline is the client's own bound on its lease (the send time of its last
// successful acquire or renew + TTL). The two sections overlap from now on;
// the overlap is a mutual-exclusion violation when both leases are still
// valid now, and an expired overlap otherwise.
func (r *register) read(client int, deadline time.Time, now time.Time) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	for other, otherDeadline := range r.inside {
		if other == client {
			continue
		}
		if now.Before(otherDeadline) && now.Before(deadline) {
			r.overlaps++
			if r.firstOverlap == "" {
				r.firstOverlap = describeOverlap(client, other, now, deadline, otherDeadline)
			}
		} else {
			r.expiredOverlaps++
		}
	}
	r.inside[client] = deadline
	return r.value
}

// write ends client's critical section, made under grant number grant: it
// stores read+1 unless fencing refuses token (below the highest accepted).
// It reports whether the write was accepted and whether it was stale (a
// later grant had returned to someone else). A stale write that fencing
// accepts is one the resource could not tell from a current one: the new
// holder had not written yet, or its token was not higher.
func (r *register) write(client int, grant, token uint64, read int64, now time.Time) (accepted, stale bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.inside, client)
	stale = grant != r.latest
	accepted = !(r.fenced && token < r.highest)
	switch {
	case stale && accepted:
		r.staleAccepted++
	case stale:
		r.staleRejected++
	}
	if accepted {
		r.value = read + 1
		r.accepted++
		if token > r.highest {
			r.highest = token
		}
	}
	r.writes = append(r.writes, write{Client: client, Token: token, Read: read, At: now, Accepted: accepted})
	return accepted, stale
}

// abandon ends a critical section without a write (the client gave up).
func (r *register) abandon(client int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.inside, client)
}

type registerStats struct {
	Value           int64
	Accepted        int64
	StaleRejected   int64
	StaleAccepted   int64
	Overlaps        int64
	ExpiredOverlaps int64
	FirstOverlap    string
	// LostIncrements = accepted writes − final value: increments that a
	// later write overwrote because it had read an older value.
	LostIncrements int64
}

func (r *register) stats() registerStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return registerStats{
		Value: r.value, Accepted: r.accepted,
		StaleRejected: r.staleRejected, StaleAccepted: r.staleAccepted,
		Overlaps: r.overlaps, ExpiredOverlaps: r.expiredOverlaps, FirstOverlap: r.firstOverlap,
		LostIncrements: r.accepted - r.value,
	}
}
