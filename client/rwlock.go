package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"
)

// The modes of a read-write lock, as Lock.Mode reports them.
const (
	ModeRead  = "read"
	ModeWrite = "write"
)

func rwPath(key, op string) string {
	p := "/v1/rwlocks/" + url.PathEscape(key)
	if op != "" {
		p += "/" + op
	}
	return p
}

type rwGrantJSON struct {
	grantJSON
	Mode string `json:"mode"`
}

// AcquireRead takes key's read-write lock in read mode: shared with other
// readers, granted once no writer is ahead in the queue (holding or
// waiting). It returns a Lock as Acquire does, whose Mode is ModeRead and
// whose Token is above every earlier writer's. opts.IdempotencyKey is not
// sent (the server keeps no record of rwlock retries).
//
// Errors: ErrHeld when not granted within opts.Wait; ErrOutcomeUnknown
// when the request reached the server and the reply was lost (a grant this
// client never saw may run until its TTL ends); ErrUnavailable; ctx's error.
func (c *Client) AcquireRead(ctx context.Context, key string, opts AcquireOptions) (*Lock, error) {
	return c.acquireRW(ctx, key, ModeRead, opts)
}

// AcquireWrite takes key's read-write lock in write mode: exclusive,
// granted at the head of the queue once nobody holds. Its Token is above
// every token granted for key before it. Otherwise as AcquireRead.
func (c *Client) AcquireWrite(ctx context.Context, key string, opts AcquireOptions) (*Lock, error) {
	return c.acquireRW(ctx, key, ModeWrite, opts)
}

func (c *Client) acquireRW(ctx context.Context, key, mode string, opts AcquireOptions) (*Lock, error) {
	start := time.Now()
	var out rwGrantJSON
	var sent time.Time
	for attempt := 0; ; attempt++ {
		wait := opts.Wait - time.Since(start)
		if wait < 0 || opts.Wait == 0 {
			wait = 0
		}
		body := map[string]any{"mode": mode, "wait_ms": ms(wait), "owner": opts.Owner}
		if opts.TTL > 0 {
			body["ttl_ms"] = ms(opts.TTL)
		}
		if opts.Session != nil {
			delete(body, "ttl_ms")
			body["session_id"] = opts.Session.ID()
		}
		var err error
		sent, err = c.send(ctx, http.MethodPost, rwPath(key, "acquire"), body, &out)
		if err == nil {
			break
		}
		if !acquireRetryable(err) || attempt >= c.retries {
			if isTransport(err) && !neverSent(err) && ctx.Err() == nil {
				err = fmt.Errorf("%w: %s acquire %q: a grant this client never saw may run until its TTL ends: %w", ErrOutcomeUnknown, mode, key, err)
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
		var r rwGrantJSON
		sent, err := c.retry(ctx, http.MethodPost, rwPath(key, "renew"), map[string]any{"lease_id": g.LeaseID, "ttl_ms": ms(g.TTL)}, &r)
		if err != nil {
			return Grant{}, err
		}
		return r.grant(sent, g.TTL), nil
	}
	release := func(ctx context.Context) error { return c.releaseAt(ctx, rwPath(key, "release"), g.LeaseID) }
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
			return nil, fmt.Errorf("lockd: %s lock on %q granted after a long wait, but its lease could not be confirmed: %w", mode, key, err)
		}
		g = r
	}
	l := newLock(c, g, opts.Margin, opts.RenewEvery, renew, release)
	l.mode = mode
	l.start()
	return l, nil
}

// releaseAt is ReleaseLease on another route: a 410 on a retry, after an
// attempt that may have reached the server, means released all the same.
func (c *Client) releaseAt(ctx context.Context, path, leaseID string) error {
	body := map[string]any{"lease_id": leaseID}
	maybeDone := false
	for attempt := 0; ; attempt++ {
		_, err := c.send(ctx, http.MethodPost, path, body, nil)
		if err == nil || maybeDone && errors.Is(err, ErrLeaseExpired) {
			return nil
		}
		if isTransport(err) && !neverSent(err) {
			maybeDone = true
		}
		if !retryable(err) || attempt >= c.retries {
			return err
		}
		if err := c.pause(ctx, attempt, err); err != nil {
			return err
		}
	}
}
