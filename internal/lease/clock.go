package lease

import "time"

// DefaultMaxSkew is the clock bound lockd declares unless told otherwise
// (--max-clock-skew).
const DefaultMaxSkew = time.Second

// Clock is lockd's one clock policy: every decision about a lease deadline
// that one replica wrote and another reads goes through it.
//
// A deadline is written with the clock of the replica that granted or
// renewed the lease. The holder's own validity ends at that deadline (Valid).
// Anyone else — another replica, a waiter, a newcomer — removes or overrides
// the grant only once it is Overdue: MaxSkew after the deadline by its own
// clock. So as long as no two replicas' clocks differ by more than MaxSkew, a
// grant is never taken from a holder still inside its own window; the price
// is that a lock whose holder died stays taken MaxSkew longer.
//
// The zero value is the system clock with no skew allowed.
type Clock struct {
	// MaxSkew is the declared bound on how far the clocks of any two lockd
	// replicas may differ.
	MaxSkew time.Duration
	offset  time.Duration // tests only: see Shifted
}

// SystemClock is the machine's clock under the declared bound.
func SystemClock(maxSkew time.Duration) Clock { return Clock{MaxSkew: maxSkew} }

// Shifted is the machine's clock moved by offset (positive: ahead), under
// the same bound: how tests stand for a replica whose clock is off.
func (c Clock) Shifted(offset time.Duration) Clock {
	c.offset += offset
	return c
}

// Now is this clock's time.
func (c Clock) Now() time.Time {
	if c.offset == 0 {
		return time.Now()
	}
	return time.Now().Add(c.offset)
}

// Until is how long from now, by the machine's timers, until this clock
// reads t.
func (c Clock) Until(t time.Time) time.Duration { return t.Sub(c.Now()) }

// Deadline is when a lease of ttl granted now runs out (see Deadline).
func (c Clock) Deadline(ttl time.Duration) time.Time { return Deadline(c.Now(), ttl) }

// Valid reports whether a lease with this deadline is still the holder's:
// what a renew checks.
func (c Clock) Valid(deadline time.Time) bool { return c.Now().Before(deadline) }

// FreeAt is when, by this clock, someone other than the holder may remove a
// grant with this deadline.
func (c Clock) FreeAt(deadline time.Time) time.Time { return deadline.Add(c.MaxSkew) }

// Overdue reports whether someone other than the holder may remove or
// override a grant with this deadline.
func (c Clock) Overdue(deadline time.Time) bool { return !c.Now().Before(c.FreeAt(deadline)) }

// OffsetTooLarge reports whether a replica whose clock is offset from a
// shared reference (a store's clock, or the median of the replicas) must stop
// serving: two replicas that each stay within half the bound of one
// reference are within the bound of each other.
func (c Clock) OffsetTooLarge(offset time.Duration) bool {
	return offset > c.MaxSkew/2 || offset < -c.MaxSkew/2
}
