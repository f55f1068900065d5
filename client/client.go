// Package client is the Go client of lockd's HTTP lock API.
//
// Acquire returns a *Lock that renews itself in the background and closes
// Lock.Lost when the lease can no longer be trusted. The client computes that
// moment itself, from when it SENT the acquire or the last successful renew
// plus the TTL: the lease started no earlier than the request left, so the
// deadline is safe whatever the server's clock says and however long the
// reply took. Pass Lock.Token to the resource you protect (see package fence):
// a lock alone cannot stop a paused holder from writing after its lease ran
// out.
//
// Retries. Requests are retried with back-off (at least the server's
// Retry-After) after a 503, after a 429 that waiting can cure (rate_limited,
// too_many_waiters: the server refused before doing anything), and after
// transport errors, but only where a retry cannot grant a lock twice or
// leave a grant behind:
//
//   - inspect, list, renew and release are retried after any transport
//     error or 503 (a renew extends the same lease, a release of a lease
//     that is already gone changes nothing);
//   - an acquire carries an Idempotency-Key, fresh for each call of
//     AcquireLease (or AcquireOptions.IdempotencyKey) and the same on each
//     of its retries, so it is retried like the others: after a transport
//     error (its reply may have been lost) or a 503, the server answers the
//     retry with the grant the first attempt made, or lets it wait in the
//     first attempt's place. The lease's Deadline then counts from the
//     FIRST attempt's send.
//   - against a lockd whose backend cannot keep idempotency records (501
//     idempotency_unsupported: none of lockd's own backends) the client
//     sends acquires without the header from then on, and retries them
//     only when the server certainly did not grant: a 429 that refused
//     before doing anything, or a connection never made. A 503 may then
//     come with a half-made grant the backend lets expire, and is returned
//     as ErrUnavailable; a lost reply is ErrOutcomeUnknown. When an acquire reached the server and its reply was
//     lost, the lock may have been granted to a lease id the client never
//     saw. Retrying would then queue behind our own orphan and, for a wait
//     longer than the TTL, eventually be granted once the orphan expired —
//     correct, but slow and surprising — so the client returns an error
//     matching ErrOutcomeUnknown instead and lets the caller decide. The
//     orphan lease blocks the key until its TTL runs out, and never longer.
package client

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Options configures a Client. The zero value (or nil) works.
type Options struct {
	// HTTPClient sends the requests. Default: a client without an overall
	// timeout (acquire waits are long polls bounded by their wait and ctx).
	HTTPClient *http.Client
	// BearerToken, when set, is sent as "Authorization: Bearer <token>".
	BearerToken string
	// MaxRetries bounds the retries of one call (see the package comment for
	// which calls retry). Default 4; negative disables retries.
	MaxRetries int
	// RetryBackoff is the first retry's delay, doubled on each retry up to
	// 2 s, with jitter; a server's Retry-After wins when longer. Default
	// 100 ms.
	RetryBackoff time.Duration
	// UserAgent is sent with every request. Default "lockd-go-client".
	UserAgent string
	// HTTP2 sends every request over HTTP/2 only: h2c (prior knowledge)
	// for http:// and h2 by ALPN for https://, so that one connection
	// carries all concurrent calls, long polls included (up to the
	// server's --http2-max-streams; beyond it another connection opens).
	// It applies to HTTPClient's Transport, which must then be an
	// *http.Transport or nil (a copy is changed, not yours). Default
	// false: the transport's own choice (HTTP/1.1 for http://).
	HTTP2 bool
}

// Client talks to one lockd server (or a load balancer in front of
// replicas). It is safe for concurrent use.
type Client struct {
	base    *url.URL
	hc      *http.Client
	token   string
	retries int
	backoff time.Duration
	ua      string

	noIdempotency atomic.Bool // the server answered 501 idempotency_unsupported
}

// New returns a client for the lockd at addr: "host:port" or a URL such as
// "http://127.0.0.1:7070".
func New(addr string, opts *Options) (*Client, error) {
	if opts == nil {
		opts = &Options{}
	}
	if addr == "" {
		return nil, errors.New("client: empty server address")
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil {
		return nil, fmt.Errorf("client: server address: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("client: server address %q: want host:port or http(s)://host:port", addr)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	c := &Client{
		base:    u,
		hc:      opts.HTTPClient,
		token:   opts.BearerToken,
		retries: opts.MaxRetries,
		backoff: opts.RetryBackoff,
		ua:      opts.UserAgent,
	}
	if c.hc == nil {
		c.hc = &http.Client{}
	}
	if opts.HTTP2 {
		if c.hc, err = http2Only(c.hc); err != nil {
			return nil, err
		}
	}
	if c.retries == 0 {
		c.retries = 4
	} else if c.retries < 0 {
		c.retries = 0
	}
	if c.backoff <= 0 {
		c.backoff = 100 * time.Millisecond
	}
	if c.ua == "" {
		c.ua = "lockd-go-client"
	}
	return c, nil
}

// http2Only is a copy of hc whose transport speaks HTTP/2 only.
func http2Only(hc *http.Client) (*http.Client, error) {
	var t *http.Transport
	switch rt := hc.Transport.(type) {
	case nil:
		t = http.DefaultTransport.(*http.Transport).Clone()
	case *http.Transport:
		t = rt.Clone()
	default:
		return nil, fmt.Errorf("client: Options.HTTP2 needs HTTPClient.Transport to be an *http.Transport or nil, not %T", rt)
	}
	var p http.Protocols
	p.SetHTTP2(true)
	p.SetUnencryptedHTTP2(true) // without HTTP1: h2c for http:// URLs
	t.Protocols = &p
	cp := *hc
	cp.Transport = t
	return &cp, nil
}

// Grant is a lease on a lock, as the server granted or renewed it.
type Grant struct {
	Key     string
	LeaseID string // the capability to renew and release; keep it secret
	Token   uint64 // the fencing token: pass it to the resource you protect
	Owner   string
	TTL     time.Duration
	// ExpiresAt is the server's expiry of the lease (its clock).
	ExpiresAt time.Time
	// Deadline is this client's own bound: when the request that granted or
	// renewed the lease was sent, plus TTL. Trust the lease only before it.
	Deadline time.Time
}

// Holder is the current holder of a lock as others see it.
type Holder struct {
	Owner     string
	Token     uint64
	ExpiresAt time.Time
}

// LockState is what Inspect and List show of one key.
type LockState struct {
	Key     string
	Held    bool
	Holder  *Holder // nil when not held
	Waiters int
}

// AcquireOptions are the parameters of an acquire. Zero values take the
// server's defaults (TTL 15 s, a single try).
type AcquireOptions struct {
	TTL   time.Duration // lease length; 100 ms .. 1 h
	Wait  time.Duration // how long to queue for the lock; 0 = one try
	Owner string        // free text shown to others (≤ 256 bytes)
	// Margin makes Lock.Lost close this long before the client's deadline,
	// to leave time to stop work. Default 0: clocks on one machine run at
	// the same rate, and the deadline is already counted from the send.
	// Used by Acquire only.
	Margin time.Duration
	// RenewEvery is how often Acquire's lock renews. Default TTL/3.
	RenewEvery time.Duration
	// IdempotencyKey names this logical acquire for the server (the
	// Idempotency-Key header): pass the same one to retry an acquire whose
	// outcome you do not know, from any process. Default: a fresh random
	// key per call, reused on the call's own retries.
	IdempotencyKey string
	// Session, when set, makes the grant live in it instead of a TTL of its
	// own (TTL is then ignored): the Lock follows the session's deadline,
	// is renewed only by the session, and is lost with it.
	Session *Session
	// LockDelay asks that, should this grant expire rather than be
	// released, nothing be granted in its place until its deadline plus
	// LockDelay (≤ 60 s): time for a holder that was only slow to stop.
	// 0 takes the server's default (--lock-delay); negative asks for none.
	LockDelay time.Duration
}

// lockDelayField adds d to an acquire's body as lock_delay_ms (see
// AcquireOptions.LockDelay).
func lockDelayField(body map[string]any, d time.Duration) map[string]any {
	switch {
	case d > 0:
		body["lock_delay_ms"] = ms(d)
	case d < 0:
		body["lock_delay_ms"] = 0
	}
	return body
}

type grantJSON struct {
	Key       string `json:"key"`
	LeaseID   string `json:"lease_id"`
	Token     uint64 `json:"token"`
	Owner     string `json:"owner"`
	TTLms     int64  `json:"ttl_ms"`
	ExpiresAt string `json:"expires_at"`
}

func (g grantJSON) grant(sent time.Time, ttl time.Duration) Grant {
	out := Grant{Key: g.Key, LeaseID: g.LeaseID, Token: g.Token, Owner: g.Owner, TTL: ttl}
	if g.TTLms > 0 {
		out.TTL = time.Duration(g.TTLms) * time.Millisecond
	}
	out.ExpiresAt, _ = time.Parse(time.RFC3339Nano, g.ExpiresAt)
	// The request may have asked for the default TTL (0): use what the
	// server says it granted.
	out.Deadline = sent.Add(out.TTL)
	return out
}

type holderJSON struct {
	Owner     string `json:"owner"`
	Token     uint64 `json:"token"`
	ExpiresAt string `json:"expires_at"`
}

func (h *holderJSON) holder() *Holder {
	if h == nil {
		return nil
	}
	t, _ := time.Parse(time.RFC3339Nano, h.ExpiresAt)
	return &Holder{Owner: h.Owner, Token: h.Token, ExpiresAt: t}
}

type stateJSON struct {
	Key       string `json:"key"`
	Held      bool   `json:"held"`
	Owner     string `json:"owner"`
	Token     uint64 `json:"token"`
	ExpiresAt string `json:"expires_at"`
	Waiters   int    `json:"waiters"`
}

func (s stateJSON) state() LockState {
	out := LockState{Key: s.Key, Held: s.Held, Waiters: s.Waiters}
	if s.Held {
		out.Holder = (&holderJSON{Owner: s.Owner, Token: s.Token, ExpiresAt: s.ExpiresAt}).holder()
	}
	return out
}

func ms(d time.Duration) int64 { return int64(d / time.Millisecond) }

func lockPath(key, op string) string {
	p := "/v1/locks/" + url.PathEscape(key)
	if op != "" {
		p += "/" + op
	}
	return p
}

// AcquireLease asks for key once (waiting up to opts.Wait) and returns the
// raw lease, without renewal: the caller renews it with RenewLease before
// Grant.Deadline or loses it. Most programs want Acquire instead.
//
// Grant.Deadline counts from when the request was sent, which after a long
// wait leaves little of the TTL; so when the reply comes after a third of
// the TTL, AcquireLease renews the lease once at once and returns the renewed
// grant, whose deadline counts from the renew's send.
//
// Errors: ErrHeld (an *Error with the holder) when not granted within the
// wait; ErrOutcomeUnknown when the request reached the server and the reply
// was lost; ErrUnavailable after the retries; ctx's error.
func (c *Client) AcquireLease(ctx context.Context, key string, opts AcquireOptions) (Grant, error) {
	start := time.Now()
	var out grantJSON
	var sent, firstSent time.Time
	idem := opts.IdempotencyKey
	if idem == "" {
		idem = newIdempotencyKey()
	}
	for attempt := 0; ; attempt++ {
		// A retry waits only for what is left of the caller's wait.
		wait := opts.Wait - time.Since(start)
		if wait < 0 || opts.Wait == 0 {
			wait = 0
		}
		body := lockDelayField(map[string]any{"ttl_ms": ms(opts.TTL), "wait_ms": ms(wait), "owner": opts.Owner}, opts.LockDelay)
		if opts.TTL == 0 {
			delete(body, "ttl_ms")
		}
		if opts.Session != nil {
			delete(body, "ttl_ms")
			body["session_id"] = opts.Session.ID()
		}
		var hdr http.Header
		keyed := !c.noIdempotency.Load()
		if keyed {
			hdr = http.Header{"Idempotency-Key": {strconv.Quote(idem)}}
		}
		var err error
		sent, err = c.sendWith(ctx, http.MethodPost, lockPath(key, "acquire"), hdr, body, &out)
		if firstSent.IsZero() || !keyed {
			firstSent = sent
		}
		if err == nil {
			// A replayed grant may have been made by the first attempt:
			// its lease is bounded from the first send.
			g := out.grant(firstSent, opts.TTL)
			if g.Key == "" {
				g.Key = key
			}
			if opts.Session != nil {
				// Bounded by the session, whose own sends count.
				g.Deadline = opts.Session.Deadline()
				return g, nil
			}
			return c.freshen(ctx, g)
		}
		if keyed && isCode(err, "idempotency_unsupported") {
			// Nothing was done; this lockd cannot keep the record.
			c.noIdempotency.Store(true)
			attempt--
			continue
		}
		retryable := acquireRetryable(err)
		if keyed {
			retryable = retryable || retryableKeyed(err)
		}
		if !retryable || attempt >= c.retries {
			// A cancelled acquire is not "unknown": the server removes a
			// waiter whose client went away, and releases a grant that
			// raced with the cancellation.
			if isTransport(err) && !neverSent(err) && ctx.Err() == nil {
				how := "until its TTL runs out"
				if keyed {
					how = "until its TTL runs out, or until an acquire with AcquireOptions.IdempotencyKey " + strconv.Quote(idem) + " fetches it"
				}
				err = fmt.Errorf("%w: acquire %q: the lock may be held by a lease this client never saw, %s: %w", ErrOutcomeUnknown, key, how, err)
			}
			return Grant{}, err
		}
		if err := c.pause(ctx, attempt, err); err != nil {
			return Grant{}, err
		}
	}
}

// freshen renews g at once when its deadline, counted from the acquire's
// send, is mostly spent: after a long wait the lease started much later than
// the request was sent, and only a new send gives a bound worth using. A
// lease that cannot be renewed now is released (best effort) and reported.
func (c *Client) freshen(ctx context.Context, g Grant) (Grant, error) {
	if time.Until(g.Deadline) > g.TTL*2/3 {
		return g, nil
	}
	r, err := c.RenewLease(ctx, g.Key, g.LeaseID, g.TTL)
	if err == nil {
		return r, nil
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	_ = c.ReleaseLease(rctx, g.Key, g.LeaseID)
	return Grant{}, fmt.Errorf("lockd: %q granted after a long wait, but its lease could not be confirmed: %w", g.Key, err)
}

// RenewLease extends leaseID to ttl from now (0: whatever the server does
// without a ttl_ms). The returned Grant.Deadline counts from this renew's
// send. Errors:
// ErrLeaseExpired (the lease is gone; renewing never resurrects it),
// ErrUnavailable after the retries, ctx's error.
func (c *Client) RenewLease(ctx context.Context, key, leaseID string, ttl time.Duration) (Grant, error) {
	body := map[string]any{"lease_id": leaseID}
	if ttl > 0 {
		body["ttl_ms"] = ms(ttl)
	}
	var out grantJSON
	sent, err := c.retry(ctx, http.MethodPost, lockPath(key, "renew"), body, &out)
	if err != nil {
		return Grant{}, err
	}
	return out.grant(sent, ttl), nil
}

// ReleaseLease frees key if leaseID holds it. Errors: ErrLeaseExpired when
// the lease no longer held the lock — except when an earlier attempt of this
// same call may have reached the server, in which case a 410 on the retry
// means the lock is no longer held by this lease either way, and nil is
// returned.
func (c *Client) ReleaseLease(ctx context.Context, key, leaseID string) error {
	body := map[string]any{"lease_id": leaseID}
	maybeDone := false
	for attempt := 0; ; attempt++ {
		_, err := c.send(ctx, http.MethodPost, lockPath(key, "release"), body, nil)
		if err == nil {
			return nil
		}
		if maybeDone && errors.Is(err, ErrLeaseExpired) {
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

// Inspect shows key's holder and waiters.
func (c *Client) Inspect(ctx context.Context, key string) (LockState, error) {
	var out stateJSON
	if _, err := c.retry(ctx, http.MethodGet, lockPath(key, ""), nil, &out); err != nil {
		return LockState{}, err
	}
	st := out.state()
	if st.Key == "" {
		st.Key = key
	}
	return st, nil
}

// List returns every held lock whose key starts with prefix, following the
// server's pages.
func (c *Client) List(ctx context.Context, prefix string) ([]LockState, error) {
	var all []LockState
	after := ""
	for {
		q := url.Values{"prefix": {prefix}}
		if after != "" {
			q.Set("after", after)
		}
		var page listJSON
		if _, err := c.retry(ctx, http.MethodGet, "/v1/locks?"+q.Encode(), nil, &page); err != nil {
			return nil, err
		}
		for _, s := range page.Locks {
			if s.Held || s.Owner != "" || s.Token != 0 {
				s.Held = true // list shows held locks only
			}
			all = append(all, s.state())
		}
		next := page.Next
		if next == "" || len(page.Locks) == 0 || next == after {
			return all, nil
		}
		after = next
	}
}

type listJSON struct {
	Locks []stateJSON `json:"locks"`
	Next  string      `json:"next"`
}

// retry sends a request that is safe to repeat.
func (c *Client) retry(ctx context.Context, method, path string, body, out any) (time.Time, error) {
	for attempt := 0; ; attempt++ {
		sent, err := c.send(ctx, method, path, body, out)
		if err == nil || !retryable(err) || attempt >= c.retries {
			return sent, err
		}
		if err := c.pause(ctx, attempt, err); err != nil {
			return time.Time{}, err
		}
	}
}

// pause sleeps before retry attempt+1.
func (c *Client) pause(ctx context.Context, attempt int, cause error) error {
	d := c.backoff << attempt
	if d > 2*time.Second || d <= 0 {
		d = 2 * time.Second
	}
	d = d/2 + rand.N(d/2+1)
	var e *Error
	if errors.As(cause, &e) && e.RetryAfter > d {
		d = e.RetryAfter
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return errors.Join(cause, ctx.Err())
	}
}

// transportError marks a failure to get an HTTP reply.
type transportError struct{ err error }

func (e *transportError) Error() string { return "lockd: " + e.err.Error() }
func (e *transportError) Unwrap() error { return e.err }

func isTransport(err error) bool {
	var t *transportError
	return errors.As(err, &t)
}

// neverSent reports whether a transport error happened before any byte of
// the request could reach the server (the connection was never made).
func neverSent(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

func retryable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var e *Error
	if errors.As(err, &e) {
		return refusedForNow(e)
	}
	return isTransport(err)
}

// refusedForNow reports whether the server answered that it did nothing and
// that the same request may succeed later.
func refusedForNow(e *Error) bool {
	return e.Status == http.StatusServiceUnavailable ||
		e.Status == http.StatusTooManyRequests && (e.Code == "rate_limited" || e.Code == "too_many_waiters")
}

// retryableKeyed reports whether an acquire that carried an Idempotency-Key
// may be sent again: the server answers a retry with the first attempt's
// grant or place, so a lost reply or a 503 is safe to retry.
func retryableKeyed(err error) bool {
	return retryable(err)
}

func isCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// newIdempotencyKey is 128 random bits, URL-safe.
func newIdempotencyKey() string {
	var b [16]byte
	_, _ = crand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// acquireRetryable reports whether an acquire may be sent again without an
// Idempotency-Key. A 503 may come with a half-made grant (the contract
// allows one on backend_unavailable), so only refusals made before anything
// was done (429 rate_limited, too_many_waiters) and connections never made
// qualify.
func acquireRetryable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Status == http.StatusTooManyRequests && refusedForNow(e)
	}
	return isTransport(err) && neverSent(err)
}

// send makes one request. It returns when the request was sent (just before
// the connection was asked for, so never later than the server saw it).
func (c *Client) send(ctx context.Context, method, path string, body, out any) (time.Time, error) {
	return c.sendWith(ctx, method, path, nil, body, out)
}

// sendWith is send with extra request headers.
func (c *Client) sendWith(ctx context.Context, method, path string, hdr http.Header, body, out any) (time.Time, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return time.Time{}, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base.String()+path, rd)
	if err != nil {
		return time.Time{}, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	req.Header.Set("Accept", "application/json, application/problem+json")
	req.Header.Set("User-Agent", c.ua)
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	sent := time.Now()
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return sent, errors.Join(&transportError{err}, ctx.Err())
		}
		return sent, &transportError{err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		if ctx.Err() != nil {
			return sent, errors.Join(&transportError{err}, ctx.Err())
		}
		return sent, &transportError{err}
	}
	if resp.StatusCode >= 300 {
		return sent, decodeProblem(resp, data)
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return sent, fmt.Errorf("lockd: decoding %s %s reply: %w", method, path, err)
		}
	}
	return sent, nil
}

func decodeProblem(resp *http.Response, data []byte) error {
	var p struct {
		Type   string      `json:"type"`
		Title  string      `json:"title"`
		Status int         `json:"status"`
		Detail string      `json:"detail"`
		Code   string      `json:"code"`
		Holder *holderJSON `json:"holder"`
		Leader *leaderJSON `json:"leader"`
		Delay  *struct {
			Until        string `json:"until"`
			ExpiredToken uint64 `json:"expired_token"`
		} `json:"lock_delay"`
	}
	e := &Error{Status: resp.StatusCode}
	if json.Unmarshal(data, &p) == nil {
		e.Type, e.Title, e.Detail, e.Code = p.Type, p.Title, p.Detail, p.Code
		e.Holder = p.Holder.holder()
		e.Leader = p.Leader.leader()
		if p.Delay != nil {
			until, _ := time.Parse(time.RFC3339Nano, p.Delay.Until)
			e.LockDelay = &LockDelay{Until: until, ExpiredToken: p.Delay.ExpiredToken}
		}
	} else {
		e.Detail = strings.TrimSpace(string(data))
		if len(e.Detail) > 200 {
			e.Detail = e.Detail[:200]
		}
	}
	if ra := resp.Header.Get("Retry-After"); ra != "" {
		if s, err := strconv.Atoi(ra); err == nil && s >= 0 {
			e.RetryAfter = time.Duration(s) * time.Second
		}
	}
	return e
}
