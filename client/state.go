package client

import "time"

// LeaseState is what a holder may assume about its lease right now.
type LeaseState int

const (
	// StateHeld: the last renew (or the acquire) succeeded and the
	// deadline is ahead.
	StateHeld LeaseState = iota + 1
	// StateJeopardy: renewals are failing (or one has taken more than a
	// renew period) while the lease may still be valid: finish or
	// checkpoint what you are doing, and take on nothing new. A renew that
	// succeeds brings the lease back to StateHeld.
	StateJeopardy
	// StateLost: final; Lost is closed and Err says why.
	StateLost
)

func (s LeaseState) String() string {
	switch s {
	case StateHeld:
		return "held"
	case StateJeopardy:
		return "jeopardy"
	case StateLost:
		return "lost"
	}
	return "unknown"
}

// State returns the lease's current state.
func (l *Lock) State() LeaseState {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state
}

// States returns a channel that receives the lease's current state at once,
// then each change (held → jeopardy → held ... → lost), and is closed after
// StateLost. The lock never waits for a reader: a reader that falls behind
// gets the latest state, not every one in between, and always the final
// StateLost. Each call returns a new channel.
func (l *Lock) States() <-chan LeaseState {
	ch := make(chan LeaseState, 1)
	l.mu.Lock()
	defer l.mu.Unlock()
	ch <- l.state
	if l.state == StateLost {
		close(ch)
		return ch
	}
	l.subs = append(l.subs, ch)
	return ch
}

// setStateLocked moves the lease to s and tells every States reader.
func (l *Lock) setStateLocked(s LeaseState) {
	if l.state == s || l.state == StateLost {
		return
	}
	l.state = s
	for _, ch := range l.subs {
		// Replace what the reader has not taken yet: only the latest
		// state matters, and the lock must not block.
		select {
		case <-ch:
		default:
		}
		ch <- s
		if s == StateLost {
			close(ch)
		}
	}
	if s == StateLost {
		l.subs = nil
	}
}

// armJeopardyLocked puts the lease in jeopardy when no renew has succeeded
// for two renew periods after sent (the send of the last successful
// request): a renew that hangs (a paused server, a silent network) fails
// only at the deadline, which is too late to warn.
func (l *Lock) armJeopardyLocked(sent time.Time) {
	if l.jeopardyTimer != nil {
		l.jeopardyTimer.Stop()
	}
	at := sent.Add(2 * l.renewEvery)
	l.jeopardyTimer = time.AfterFunc(time.Until(at), func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.err == nil && !time.Now().Before(l.deadline.Add(-l.ttl).Add(2*l.renewEvery)) {
			l.setStateLocked(StateJeopardy)
		}
	})
}
