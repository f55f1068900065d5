package client

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Lock is a held lock that renews itself until Release or until it is lost.
type Lock struct {
	c          *Client
	key        string
	leaseID    string
	token      uint64
	owner      string
	ttl        time.Duration
	margin     time.Duration
	renewEvery time.Duration

	mu        sync.Mutex
	deadline  time.Time // client-side: last successful send + ttl
	expiresAt time.Time // server-side, for display
	timer     *time.Timer
	err       error // why Lost closed; nil while held
	lost      chan struct{}

	state         LeaseState
	subs          []chan LeaseState // States readers
	jeopardyTimer *time.Timer

	stop context.CancelFunc // ends the renewal loop
	done chan struct{}      // closed when the renewal loop has returned

	// renewFn and releaseFn, when set, renew and release another kind of
	// lease than a lock's (an election's); see Campaign.
	renewFn   func(ctx context.Context) (Grant, error)
	releaseFn func(ctx context.Context) error

	slot, permits int    // a semaphore permit's (AcquireSemaphore); 0 for a lock
	mode          string // a read-write lock's; "" for a lock
}

// Acquire takes key, waiting up to opts.Wait, and returns a Lock that renews
// itself every opts.RenewEvery (default TTL/3) until Release. Errors are
// those of AcquireLease.
func (c *Client) Acquire(ctx context.Context, key string, opts AcquireOptions) (*Lock, error) {
	g, err := c.AcquireLease(ctx, key, opts)
	if err != nil {
		return nil, err
	}
	if g.Key == "" {
		g.Key = key
	}
	var follow func(context.Context) (Grant, error)
	if opts.Session != nil {
		follow = opts.Session.follow(g)
	}
	l := newLock(c, g, opts.Margin, opts.RenewEvery, follow, nil)
	l.start()
	return l, nil
}

// newLock is the Lock of grant g; start starts its renewal.
func newLock(c *Client, g Grant, margin, renewEvery time.Duration, renewFn func(context.Context) (Grant, error), releaseFn func(context.Context) error) *Lock {
	l := &Lock{
		c: c, key: g.Key, leaseID: g.LeaseID, token: g.Token, owner: g.Owner,
		ttl: g.TTL, margin: margin, renewEvery: renewEvery,
		lost: make(chan struct{}), done: make(chan struct{}),
		renewFn: renewFn, releaseFn: releaseFn,
		state: StateHeld,
	}
	if l.renewEvery <= 0 || l.renewEvery >= l.ttl {
		l.renewEvery = l.ttl / 3
	}
	l.mu.Lock()
	l.extendLocked(g)
	l.mu.Unlock()
	return l
}

func (l *Lock) start() {
	// The renewal loop lives as long as the lock, not as the acquire's ctx.
	life, stop := context.WithCancel(context.Background())
	l.stop = stop
	go l.renewLoop(life)
}

// Mode returns ModeRead or ModeWrite for a read-write lock (AcquireRead,
// AcquireWrite), and "" for a lock.
func (l *Lock) Mode() string { return l.mode }

// Key returns the lock's key.
func (l *Lock) Key() string { return l.key }

// Token returns the fencing token: pass it with every write to the resource
// the lock protects.
func (l *Lock) Token() uint64 { return l.token }

// LeaseID returns the lease id, the capability to renew and release.
func (l *Lock) LeaseID() string { return l.leaseID }

// Owner returns the owner text the lock was acquired with.
func (l *Lock) Owner() string { return l.owner }

// TTL returns the lease length.
func (l *Lock) TTL() time.Duration { return l.ttl }

// Deadline returns the client's current deadline for the lease: when the
// last successful acquire or renew was sent, plus the TTL.
func (l *Lock) Deadline() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deadline
}

// ExpiresAt returns the server's last stated expiry (its clock).
func (l *Lock) ExpiresAt() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.expiresAt
}

// Lost is closed when the lease can no longer be trusted: a renew was
// refused, the client's deadline (minus AcquireOptions.Margin) passed without
// a successful renew, or the lock was released. Stop using the protected
// resource at once when it closes. States gives the warning before it:
// jeopardy while renewals fail.
func (l *Lock) Lost() <-chan struct{} { return l.lost }

// Err returns nil while the lock is held, and why it was lost afterwards
// (matching ErrLeaseExpired or ErrReleased).
func (l *Lock) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// extendLocked moves the deadline to g's and re-arms the loss timer.
func (l *Lock) extendLocked(g Grant) {
	if l.err != nil {
		return
	}
	l.deadline = g.Deadline
	l.expiresAt = g.ExpiresAt
	if l.timer != nil {
		l.timer.Stop()
	}
	l.timer = time.AfterFunc(time.Until(g.Deadline.Add(-l.margin)), l.checkDeadline)
	l.armJeopardyLocked(g.Deadline.Add(-l.ttl))
	l.setStateLocked(StateHeld)
}

// checkDeadline runs when the loss timer fires; a renew may have moved the
// deadline in the meantime.
func (l *Lock) checkDeadline() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err == nil && !time.Now().Before(l.deadline.Add(-l.margin)) {
		l.loseLocked(lostError{"lockd: lease deadline passed without a successful renew"})
	}
}

type lostError struct{ msg string }

func (e lostError) Error() string { return e.msg }
func (lostError) Unwrap() error   { return ErrLeaseExpired }

func (l *Lock) loseLocked(err error) {
	if l.err != nil {
		return
	}
	if !errors.Is(err, ErrLeaseExpired) && !errors.Is(err, ErrReleased) {
		err = lostError{err.Error()}
	}
	l.err = err
	if l.timer != nil {
		l.timer.Stop()
	}
	if l.jeopardyTimer != nil {
		l.jeopardyTimer.Stop()
	}
	close(l.lost)
	l.setStateLocked(StateLost)
}

func (l *Lock) renewLoop(ctx context.Context) {
	defer close(l.done)
	next := time.Now().Add(l.renewEvery)
	for {
		t := time.NewTimer(time.Until(next))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-l.lost:
			t.Stop()
			return
		case <-t.C:
		}
		err := l.Renew(ctx)
		switch {
		case err == nil:
			next = time.Now().Add(l.renewEvery)
		case errors.Is(err, ErrLeaseExpired), ctx.Err() != nil:
			return // Renew has closed Lost, or the lock is being released
		default:
			// Keep trying until the deadline; the loss timer closes Lost.
			pause := l.ttl / 20
			pause = max(pause, 10*time.Millisecond)
			pause = min(pause, time.Second)
			next = time.Now().Add(pause)
		}
	}
}

// Renew renews the lease now (the background loop does this on its own).
// A refusal (ErrLeaseExpired) closes Lost. The request gives up at the
// deadline: a renew sent after it could not be trusted anyway.
func (l *Lock) Renew(ctx context.Context) error {
	l.mu.Lock()
	err, deadline := l.err, l.deadline
	l.mu.Unlock()
	if err != nil {
		return err
	}
	rctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var g Grant
	if l.renewFn != nil {
		g, err = l.renewFn(rctx)
	} else {
		g, err = l.c.RenewLease(rctx, l.key, l.leaseID, l.ttl)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case err == nil:
		if g.Token != l.token {
			// A renew keeps the token; anything else is not our grant.
			l.loseLocked(lostError{"lockd: renew returned another token"})
			return l.err
		}
		l.extendLocked(g)
		return nil
	case errors.Is(err, ErrLeaseExpired):
		l.loseLocked(err)
	case ctx.Err() == nil:
		// Failing while the lease may still be valid.
		l.setStateLocked(StateJeopardy)
	}
	return err
}

// Release stops renewal and frees the lock. It closes Lost (Err then matches
// ErrReleased). It returns an error matching ErrLeaseExpired when the lease
// had already been lost; the lock is not held by this lease either way.
func (l *Lock) Release(ctx context.Context) error {
	l.stop()
	<-l.done
	var err error
	if l.releaseFn != nil {
		err = l.releaseFn(ctx)
	} else {
		err = l.c.ReleaseLease(ctx, l.key, l.leaseID)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err == nil || errors.Is(err, ErrLeaseExpired) {
		l.loseLocked(ErrReleased)
	}
	return err
}
