package client

import (
	"context"
	"fmt"
	"net/http"
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
	start := time.Now()
	var out permitJSON
	var sent time.Time
	for attempt := 0; ; attempt++ {
		wait := opts.Wait - time.Since(start)
		if wait < 0 || opts.Wait == 0 {
			wait = 0
		}
		body := map[string]any{"permits": opts.Permits, "wait_ms": ms(wait), "owner": opts.Owner}
		if opts.TTL > 0 {
			body["ttl_ms"] = ms(opts.TTL)
		}
		if opts.Session != nil {
			delete(body, "ttl_ms")
			body["session_id"] = opts.Session.ID()
		}
		var err error
		sent, err = c.send(ctx, http.MethodPost, semaphorePath(key, "acquire"), body, &out)
		if err == nil {
			break
		}
		if !acquireRetryable(err) || attempt >= c.retries {
			if isTransport(err) && !neverSent(err) && ctx.Err() == nil {
				err = fmt.Errorf("%w: permit of %q: a permit this client never saw may run until its TTL ends: %w", ErrOutcomeUnknown, key, err)
			}
			return nil, err
		}
		if err := c.pause(ctx, attempt, err); err != nil {
			return nil, err
		}
	}
	g := out.grant(sent, opts.TTL)
	if g.Key == "" {
		g.Key = key
	}
	renew := func(ctx context.Context) (Grant, error) {
		var r permitJSON
		sent, err := c.retry(ctx, http.MethodPost, semaphorePath(key, "renew"), map[string]any{"lease_id": g.LeaseID, "ttl_ms": ms(g.TTL)}, &r)
		if err != nil {
			return Grant{}, err
		}
		return r.grant(sent, g.TTL), nil
	}
	release := func(ctx context.Context) error {
		_, err := c.retry(ctx, http.MethodPost, semaphorePath(key, "release"), map[string]any{"lease_id": g.LeaseID}, nil)
		return err
	}
	if opts.Session != nil {
		g.Deadline = opts.Session.Deadline()
		renew = opts.Session.follow(g)
	} else if time.Until(g.Deadline) <= g.TTL*2/3 {
		// Granted after a long wait: only a new send gives a bound worth
		// using (as AcquireLease does).
		r, err := renew(ctx)
		if err != nil {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			defer cancel()
			_ = release(rctx)
			return nil, fmt.Errorf("lockd: permit of %q granted after a long wait, but the lease could not be confirmed: %w", key, err)
		}
		g = r
	}
	l := newLock(c, g, opts.Margin, opts.RenewEvery, renew, release)
	l.slot, l.permits = out.Slot, out.Permits
	l.start()
	return l, nil
}

// Slot returns a semaphore permit's slot (in 0..Permits-1); 0 for a lock.
func (l *Lock) Slot() int { return l.slot }

// Permits returns a semaphore permit's semaphore size; 0 for a lock.
func (l *Lock) Permits() int { return l.permits }
