package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/lockd/lockd/backend"
)

// Locker is what every workload drives. lockd (through its HTTP API, or
// through the backend contract when the HTTP layer is absent) and each direct
// client library implement it, so the same workload code measures all of
// them.
//
// It is the one lock interface beside backend.Backend, and it exists only
// for the direct libraries: concurrency.Mutex, zk.Lock, redsync and SET NX
// can acquire and release but have no lease id to renew, no inspection and
// no list, so they could implement backend.Backend only with methods that
// lie. Every lockd path is backend.Backend underneath (contractLocker, or
// internal/httpapi over it), and the mutation tests wrap backend.Backend.
// What a workload needs beyond the two calls (renew) is the optional
// renewer interface, which only lockd's lockers have.
type Locker interface {
	// Acquire waits up to wait for key. Not granted in time: an error
	// wrapping backend.ErrHeld.
	Acquire(ctx context.Context, key, owner string, ttl, wait time.Duration) (*Lease, error)
	Release(ctx context.Context, l *Lease) error
	Close() error
}

// Lease is a held lock as a workload sees it.
type Lease struct {
	Key   string
	ID    string
	Token uint64
	// Sent is when the acquire request left the client: the client's own
	// deadline is Sent + TTL (the lock service's clock is not trusted).
	Sent time.Time
	TTL  time.Duration
	// handle carries a direct library's own lock object.
	handle any
}

// Deadline is the last instant the holder may believe it holds the lock.
func (l *Lease) Deadline() time.Time { return l.Sent.Add(l.TTL) }

// contractLocker drives a backend.Backend directly, in process: lockd
// without its HTTP layer.
type contractLocker struct{ b backend.Backend }

func (c contractLocker) Acquire(ctx context.Context, key, owner string, ttl, wait time.Duration) (*Lease, error) {
	sent := time.Now()
	g, err := c.b.Acquire(ctx, backend.AcquireRequest{Key: key, Owner: owner, TTL: ttl, Wait: wait})
	if err != nil {
		return nil, err
	}
	return &Lease{Key: key, ID: g.LeaseID, Token: g.Token, Sent: sent, TTL: ttl}, nil
}

func (c contractLocker) Release(ctx context.Context, l *Lease) error {
	return c.b.Release(ctx, l.Key, l.ID)
}

func (c contractLocker) Close() error { return nil }

// httpLocker speaks lockd's v1 HTTP API with plain net/http, exactly as
// issue 2 writes it: a client that knows nothing of lockd's Go packages.
type httpLocker struct {
	base string
	hc   *http.Client
}

func newHTTPLocker(base string) *httpLocker {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 512
	tr.MaxConnsPerHost = 0
	return &httpLocker{base: base, hc: &http.Client{Transport: tr}}
}

type problem struct {
	Status int    `json:"status"`
	Code   string `json:"code"`
	Detail string `json:"detail"`
}

func (h *httpLocker) post(ctx context.Context, key, op string, body any) (*http.Response, error) {
	return h.postKeyed(ctx, key, op, body, "")
}

// postKeyed sends an Idempotency-Key header when idem is not empty.
func (h *httpLocker) postKeyed(ctx context.Context, key, op string, body any, idem string) (*http.Response, error) {
	return h.postTo(ctx, "/v1/locks/"+url.PathEscape(key)+"/"+op, body, idem)
}

// postTo posts body as JSON to path.
func (h *httpLocker) postTo(ctx context.Context, path string, body any, idem string) (*http.Response, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.base+path, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if idem != "" {
		req.Header.Set("Idempotency-Key", idem)
	}
	resp, err := h.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, errors.Join(err, ctx.Err())
		}
		return nil, fmt.Errorf("%w: %v", backend.ErrUnavailable, err)
	}
	return resp, nil
}

// errorFrom maps a problem+json answer back onto the contract's sentinels.
func errorFrom(resp *http.Response) error {
	var p problem
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	_ = json.Unmarshal(body, &p)
	switch {
	case resp.StatusCode == http.StatusConflict:
		return fmt.Errorf("%w: %s", backend.ErrHeld, p.Detail)
	case resp.StatusCode == http.StatusGone:
		return fmt.Errorf("%w: %s", backend.ErrLeaseExpired, p.Detail)
	case resp.StatusCode == http.StatusServiceUnavailable:
		return fmt.Errorf("%w: %s %s", backend.ErrUnavailable, p.Code, p.Detail)
	default:
		return fmt.Errorf("lockd: HTTP %d %s %s", resp.StatusCode, p.Code, p.Detail)
	}
}

func (h *httpLocker) Acquire(ctx context.Context, key, owner string, ttl, wait time.Duration) (*Lease, error) {
	return h.acquireKeyed(ctx, key, owner, ttl, wait, "")
}

// acquireKeyed is Acquire with an Idempotency-Key (none when idem is "").
func (h *httpLocker) acquireKeyed(ctx context.Context, key, owner string, ttl, wait time.Duration, idem string) (*Lease, error) {
	sent := time.Now()
	resp, err := h.postKeyed(ctx, key, "acquire", map[string]any{
		"ttl_ms": ttl.Milliseconds(), "wait_ms": wait.Milliseconds(), "owner": owner,
	}, idem)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, errorFrom(resp)
	}
	var g struct {
		LeaseID string `json:"lease_id"`
		Token   uint64 `json:"token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&g); err != nil {
		return nil, fmt.Errorf("lockd: decode grant: %w", err)
	}
	return &Lease{Key: key, ID: g.LeaseID, Token: g.Token, Sent: sent, TTL: ttl}, nil
}

func (h *httpLocker) Release(ctx context.Context, l *Lease) error {
	resp, err := h.post(ctx, l.Key, "release", map[string]any{"lease_id": l.ID})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent && resp.StatusCode != http.StatusOK {
		return errorFrom(resp)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return nil
}

func (h *httpLocker) Close() error {
	h.hc.CloseIdleConnections()
	return nil
}
