package harness

import (
	"fmt"
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

	// Grants are numbered in the order their holders enter the critical
	// section (read): a grant that is never used (its reply came too late,
	// its renew failed) supersedes nobody. latest is the newest number,
	// lastWritten the newest whose holder has written.
	latest, lastWritten uint64
	grants              []grantRec // grants[n-1] is grant number n
	firstStale          string

	accepted      int64
	staleRejected int64
	staleAccepted int64
	// superseded counts writes by a holder whose successor had entered but
	// not written yet: the resource has seen no higher token, so no fence
	// can refuse them. Not stale; shown beside.
	superseded int64
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

// grantRec is one grant as the register numbered it.
type grantRec struct {
	client int
	token  uint64
	at     time.Time
}

// read starts client's critical section under a grant with token and
// returns the value it sees and the grant's number. deadline is the client's own bound on its lease (the send time of its last
// successful acquire or renew + TTL). The two sections overlap from now on;
// the overlap is a mutual-exclusion violation when both leases are still
// valid now, and an expired overlap otherwise.
func (r *register) read(client int, token uint64, deadline time.Time, now time.Time) (int64, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.latest++
	r.grants = append(r.grants, grantRec{client: client, token: token, at: now})
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
	return r.value, r.latest
}

// write ends client's critical section, made under grant number grant: it
// stores read+1 unless fencing refuses token (below the highest accepted).
// It reports whether the write was accepted and whether it was stale: a
// grant that entered after this one has already written, so the resource
// has seen the successor. A fence refuses every stale write when tokens
// rise with the grants; one it accepts means the successor's token was not
// higher. A write whose successor has entered but not yet written is
// counted as superseded instead: no fence can refuse it.
func (r *register) write(client int, grant, token uint64, read int64, now time.Time) (accepted, stale bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.inside, client)
	stale = r.lastWritten > grant
	if !stale && r.latest > grant {
		r.superseded++
	}
	r.lastWritten = max(r.lastWritten, grant)
	accepted = !(r.fenced && token < r.highest)
	switch {
	case stale && accepted:
		r.staleAccepted++
		if r.firstStale == "" {
			g, l := r.grants[grant-1], r.grants[r.lastWritten-1]
			r.firstStale = fmt.Sprintf("client %d wrote with token %d (entered %s before) after client %d, which entered %s before the write with token %d, had written; highest accepted token %d",
				client, token, now.Sub(g.at).Round(time.Microsecond), l.client, now.Sub(l.at).Round(time.Microsecond), l.token, r.highest)
		}
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
	Superseded      int64
	Overlaps        int64
	ExpiredOverlaps int64
	FirstOverlap    string
	FirstStale      string
	// LostIncrements = accepted writes − final value: increments that a
	// later write overwrote because it had read an older value.
	LostIncrements int64
}

func (r *register) stats() registerStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return registerStats{
		Value: r.value, Accepted: r.accepted,
		StaleRejected: r.staleRejected, StaleAccepted: r.staleAccepted, Superseded: r.superseded,
		Overlaps: r.overlaps, ExpiredOverlaps: r.expiredOverlaps, FirstOverlap: r.firstOverlap, FirstStale: r.firstStale,
		LostIncrements: r.accepted - r.value,
	}
}
