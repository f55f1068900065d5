package client

import (
	"context"
	"fmt"
	"net/url"
	"time"
)

// SemaphoreOptions are the parameters of a permit. Permits is required;
// other zero values take the server's defaults (TTL 15 s, a single try).
type SemaphoreOptions struct {
	Permits int           // the semaphore's size, 1..10000; it must match the live semaphore's
	TTL     time.Duration // lease length; 100 ms .. 1 h
	Wait    time.Duration // how long to wait in line; 0 = one try
	Owner   string        // free text shown to others (≤ 256 bytes)
	// Margin and RenewEvery are as for AcquireOptions.
	Margin     time.Duration
	RenewEvery time.Duration
	// Session, as for AcquireOptions: the permit lives in it.
	Session *Session
	// LockDelay, as for AcquireOptions: it holds the permit's slot.
	LockDelay time.Duration
}

type permitJSON struct {
	grantJSON
	Slot    int `json:"slot"`
	Permits int `json:"permits"`
}

func semaphorePath(key, op string) string {
	return "/v1/semaphores/" + url.PathEscape(key) + "/" + op
}

// AcquireSemaphore waits up to opts.Wait for one permit of the counting
// semaphore key and returns it as a Lock that renews itself (Lost, Err,
// Deadline, Release as for a lock). Slot is the permit's slot: fence with
// (Key, Slot, Token) — the fence package's Lock-Slot header — since tokens
// increase over all permits of the key and only per slot.
//
// Errors: ErrHeld (all permits taken within the wait); an *Error with code
// "permits_mismatch" when the live semaphore has another size;
// ErrOutcomeUnknown when the request reached the server and the reply was
// lost (permits carry no Idempotency-Key, so it is not retried: a permit
// this client never saw may run until its TTL ends); ErrUnavailable; ctx's
// error.
func (c *Client) AcquireSemaphore(ctx context.Context, key string, opts SemaphoreOptions) (*Lock, error) {
	out, l, err := callLease[permitJSON](ctx, c, leaseCall{
		key: key, path: func(op string) string { return semaphorePath(key, op) }, acquire: "acquire", end: "release",
		body: lockDelayField(map[string]any{"permits": opts.Permits, "owner": opts.Owner}, opts.LockDelay),
		ttl:  opts.TTL, wait: opts.Wait, session: opts.Session, margin: opts.Margin, renewEvery: opts.RenewEvery,
		lost: "a permit", late: fmt.Sprintf("permit of %q", key),
	})
	if err != nil {
		return nil, err
	}
	l.slot, l.permits = out.Slot, out.Permits
	l.start()
	return l, nil
}

// Slot returns a semaphore permit's slot (in 0..Permits-1); 0 for a lock.
func (l *Lock) Slot() int { return l.slot }

// Permits returns a semaphore permit's semaphore size; 0 for a lock.
func (l *Lock) Permits() int { return l.permits }
