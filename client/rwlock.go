package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
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
	_, l, err := callLease[rwGrantJSON](ctx, c, leaseCall{
		key: key, path: func(op string) string { return rwPath(key, op) }, acquire: "acquire", end: "release",
		body: lockDelayField(map[string]any{"mode": mode, "owner": opts.Owner}, opts.LockDelay),
		ttl:  opts.TTL, wait: opts.Wait, session: opts.Session, margin: opts.Margin, renewEvery: opts.RenewEvery,
		lost: "a grant", late: fmt.Sprintf("%s lock on %q", mode, key),
	})
	if err != nil {
		return nil, err
	}
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
