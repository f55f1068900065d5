package client

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"time"
)

// leaseCall is what a campaign, a semaphore permit and a read or write
// lock share: a grant asked for on a route of its own, renewed and ended
// on that route, that lives in a session or is confirmed by a renew when it
// came after a long wait (the client's bound on a lease is counted from a
// send). None carries an Idempotency-Key, so an acquire whose reply was
// lost is not sent again.
type leaseCall struct {
	key                string
	path               func(op string) string
	acquire, end       string         // the ops that ask for and end the grant
	body               map[string]any // the route's own fields
	ttl, wait          time.Duration
	session            *Session
	margin, renewEvery time.Duration
	// lost names what an acquire whose reply was lost may have left
	// running; late names the grant when its confirming renew fails.
	lost, late string
}

// grantReply is a route's JSON answer, which gives the grant it carries.
type grantReply interface {
	grant(sent time.Time, ttl time.Duration) Grant
}

// callLease asks for lc's grant, waiting in line up to lc.wait, and returns
// the route's answer and the grant as a Lock that is not started yet.
func callLease[J any, R interface {
	*J
	grantReply
}](ctx context.Context, c *Client, lc leaseCall) (*J, *Lock, error) {
	start := time.Now()
	var out J
	var sent time.Time
	for attempt := 0; ; attempt++ {
		wait := lc.wait - time.Since(start)
		if wait < 0 || lc.wait == 0 {
			wait = 0
		}
		body := maps.Clone(lc.body)
		body["wait_ms"] = ms(wait)
		switch {
		case lc.session != nil:
			body["session_id"] = lc.session.ID()
		case lc.ttl > 0:
			body["ttl_ms"] = ms(lc.ttl)
		}
		var err error
		sent, err = c.send(ctx, http.MethodPost, lc.path(lc.acquire), body, &out)
		if err == nil {
			break
		}
		if !acquireRetryable(err) || attempt >= c.retries {
			if isTransport(err) && !neverSent(err) && ctx.Err() == nil {
				err = fmt.Errorf("%w: %s: %s this client never saw may run until its TTL ends: %w", ErrOutcomeUnknown, lc.late, lc.lost, err)
			}
			return nil, nil, err
		}
		if err := c.pause(ctx, attempt, err); err != nil {
			return nil, nil, err
		}
	}
	g := R(&out).grant(sent, lc.ttl)
	if g.Key == "" {
		g.Key = lc.key
	}
	renew := func(ctx context.Context) (Grant, error) {
		var r J
		sent, err := c.retry(ctx, http.MethodPost, lc.path("renew"), map[string]any{"lease_id": g.LeaseID, "ttl_ms": ms(g.TTL)}, &r)
		if err != nil {
			return Grant{}, err
		}
		return R(&r).grant(sent, g.TTL), nil
	}
	release := func(ctx context.Context) error { return c.releaseAt(ctx, lc.path(lc.end), g.LeaseID) }
	if lc.session != nil {
		g.Deadline = lc.session.Deadline()
		renew = lc.session.follow(g)
	} else if time.Until(g.Deadline) <= g.TTL*2/3 {
		// Granted after a long wait: only a new send gives a bound worth
		// using (as AcquireLease does).
		r, err := renew(ctx)
		if err != nil {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			defer cancel()
			_ = release(rctx)
			return nil, nil, fmt.Errorf("lockd: %s granted after a long wait, but its lease could not be confirmed: %w", lc.late, err)
		}
		g = r
	}
	return &out, newLock(c, g, lc.margin, lc.renewEvery, renew, release), nil
}
