package harness

// The clients of lockd's two other primitives, counting semaphores and
// read-write locks, as the perf rows (semaphores.go, rwlocks.go) and the
// correctness workloads beside the lock workload drive them: over lockd's
// HTTP API with plain net/http, or through the backend contract in process
// (-no-http). A backend that keeps neither says why in /v1/capabilities,
// and every row and check of the primitive says so instead of a number.

import (
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

// primLease is a held permit or read-write lock as a workload sees it.
type primLease struct {
	Lease
	Slot int    // the permit's slot (semaphores)
	Mode string // backend.ModeRead or ModeWrite (read-write locks)
}

// primReq asks for one permit (Permits set) or one read-write lock (Mode
// set).
type primReq struct {
	Key, Owner string
	Permits    int
	Mode       string
	TTL, Wait  time.Duration
}

// primClient is one client of a semaphore or a read-write lock.
type primClient interface {
	// acquire waits up to req.Wait; not granted in time: an error
	// wrapping backend.ErrHeld.
	acquire(ctx context.Context, req primReq) (*primLease, error)
	renew(ctx context.Context, l *primLease, ttl time.Duration) error
	release(ctx context.Context, l *primLease) error
	// waiters is how many acquirers wait on key, as inspection shows.
	waiters(ctx context.Context, key string) (int, error)
	Close() error
}

// primSupport says why the replica's backend keeps no feature
// (backend.FeatureSemaphores or FeatureRWLocks), "" when it keeps it. Over
// HTTP it asks GET /v1/capabilities, as any client would; in process it
// reads the same type assertions the capabilities are made of.
func primSupport(ctx context.Context, r *lockdReplica, feature string) string {
	if r.srv == nil {
		ok := false
		switch feature {
		case backend.FeatureSemaphores:
			_, ok = r.b.(backend.Semaphorer)
		case backend.FeatureRWLocks:
			_, ok = r.b.(backend.RWLocker)
		}
		if ok {
			return ""
		}
		if u, isU := r.b.(backend.Unsupported); isU && u.Unsupported()[feature] != "" {
			return u.Unsupported()[feature]
		}
		return "the backend declares no " + feature
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(cctx, http.MethodGet, r.url+"/v1/capabilities", nil)
	if err != nil {
		return err.Error()
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "GET /v1/capabilities: " + err.Error()
	}
	defer resp.Body.Close()
	var caps struct {
		Features    map[string]json.RawMessage `json:"features"`
		Unsupported map[string]string          `json:"unsupported"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&caps); err != nil {
		return "GET /v1/capabilities: " + err.Error()
	}
	if f, ok := caps.Features[feature]; ok && string(f) != "null" {
		return ""
	}
	if why := caps.Unsupported[feature]; why != "" {
		return why
	}
	return feature + " is null in /v1/capabilities, with no reason given"
}

// primClientOf returns a client of feature through replica r; the caller
// has checked primSupport.
func (r *lockdReplica) primClientOf(feature string) primClient {
	route := "/v1/semaphores/"
	if feature == backend.FeatureRWLocks {
		route = "/v1/rwlocks/"
	}
	if r.srv != nil {
		return &httpPrim{h: newHTTPLocker(r.url), route: route}
	}
	c := &contractPrim{r: r}
	if sm, ok := r.b.(backend.Semaphorer); ok && feature == backend.FeatureSemaphores {
		c.sm = sm.Semaphores()
	}
	if rw, ok := r.b.(backend.RWLocker); ok && feature == backend.FeatureRWLocks {
		c.rw = rw.RWLocks()
	}
	return c
}

// httpPrim speaks /v1/semaphores or /v1/rwlocks with plain net/http.
type httpPrim struct {
	h     *httpLocker
	route string
}

func (p *httpPrim) acquire(ctx context.Context, req primReq) (*primLease, error) {
	sent := time.Now()
	body := map[string]any{"ttl_ms": req.TTL.Milliseconds(), "wait_ms": req.Wait.Milliseconds(), "owner": req.Owner}
	if req.Permits > 0 {
		body["permits"] = req.Permits
	} else {
		body["mode"] = req.Mode
	}
	resp, err := p.h.postTo(ctx, p.route+url.PathEscape(req.Key)+"/acquire", body, "")
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
		Slot    int    `json:"slot"`
		Mode    string `json:"mode"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&g); err != nil {
		return nil, fmt.Errorf("lockd: decode grant: %w", err)
	}
	return &primLease{Lease: Lease{Key: req.Key, ID: g.LeaseID, Token: g.Token, Sent: sent, TTL: req.TTL}, Slot: g.Slot, Mode: g.Mode}, nil
}

func (p *httpPrim) expect(ctx context.Context, key, op string, body any, ok ...int) error {
	resp, err := p.h.postTo(ctx, p.route+url.PathEscape(key)+"/"+op, body, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	for _, s := range ok {
		if resp.StatusCode == s {
			_, _ = io.Copy(io.Discard, resp.Body)
			return nil
		}
	}
	return errorFrom(resp)
}

func (p *httpPrim) renew(ctx context.Context, l *primLease, ttl time.Duration) error {
	return p.expect(ctx, l.Key, "renew", map[string]any{"lease_id": l.ID, "ttl_ms": ttl.Milliseconds()}, http.StatusOK)
}

func (p *httpPrim) release(ctx context.Context, l *primLease) error {
	return p.expect(ctx, l.Key, "release", map[string]any{"lease_id": l.ID}, http.StatusNoContent, http.StatusOK)
}

func (p *httpPrim) waiters(ctx context.Context, key string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.h.base+p.route+url.PathEscape(key), nil)
	if err != nil {
		return 0, err
	}
	resp, err := p.h.hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, errorFrom(resp)
	}
	// A semaphore's waiters are a count; a read-write lock's are a count
	// per mode.
	var st struct {
		Waiters json.RawMessage `json:"waiters"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return 0, err
	}
	var n int
	if json.Unmarshal(st.Waiters, &n) == nil {
		return n, nil
	}
	var rw struct{ Read, Write int }
	if err := json.Unmarshal(st.Waiters, &rw); err != nil {
		return 0, fmt.Errorf("lockd: decode waiters %s: %w", st.Waiters, err)
	}
	return rw.Read + rw.Write, nil
}

func (p *httpPrim) Close() error { return p.h.Close() }

// contractPrim drives backend.Semaphores or backend.RWLocks in process; a
// killed replica refuses calls as a dead process would.
type contractPrim struct {
	r  *lockdReplica
	sm backend.Semaphores
	rw backend.RWLocks
}

func (c *contractPrim) acquire(ctx context.Context, req primReq) (*primLease, error) {
	if c.r.dead() {
		return nil, errReplicaDead
	}
	c.r.gate.wait(ctx)
	defer c.r.gate.wait(ctx)
	sent := time.Now()
	if c.sm != nil {
		p, err := c.sm.Acquire(ctx, backend.SemaphoreRequest{Key: req.Key, Permits: req.Permits, Owner: req.Owner, TTL: req.TTL, Wait: req.Wait})
		if err != nil {
			return nil, err
		}
		return &primLease{Lease: Lease{Key: req.Key, ID: p.LeaseID, Token: p.Token, Sent: sent, TTL: req.TTL}, Slot: p.Slot}, nil
	}
	g, err := c.rw.Acquire(ctx, backend.RWAcquireRequest{Mode: req.Mode,
		AcquireRequest: backend.AcquireRequest{Key: req.Key, Owner: req.Owner, TTL: req.TTL, Wait: req.Wait}})
	if err != nil {
		return nil, err
	}
	return &primLease{Lease: Lease{Key: req.Key, ID: g.LeaseID, Token: g.Token, Sent: sent, TTL: req.TTL}, Mode: g.Mode}, nil
}

func (c *contractPrim) renew(ctx context.Context, l *primLease, ttl time.Duration) error {
	if c.r.dead() {
		return errReplicaDead
	}
	var err error
	if c.sm != nil {
		_, err = c.sm.Renew(ctx, l.Key, l.ID, ttl)
	} else {
		_, err = c.rw.Renew(ctx, l.Key, l.ID, ttl)
	}
	return err
}

func (c *contractPrim) release(ctx context.Context, l *primLease) error {
	if c.r.dead() {
		return errReplicaDead
	}
	c.r.gate.wait(ctx)
	if c.sm != nil {
		return c.sm.Release(ctx, l.Key, l.ID)
	}
	return c.rw.Release(ctx, l.Key, l.ID)
}

func (c *contractPrim) waiters(ctx context.Context, key string) (int, error) {
	if c.sm != nil {
		st, err := c.sm.Inspect(ctx, key)
		return st.Waiters, err
	}
	st, err := c.rw.Inspect(ctx, key)
	return st.WaitingReaders + st.WaitingWriters, err
}

func (c *contractPrim) Close() error { return nil }

// primReplica starts a lockd replica over a fresh backend for the perf
// rows of feature. When the backend keeps no feature it returns no replica
// and the reason; when it cannot start one, the error.
func primReplica(ctx context.Context, d *deployment, feature string) (r *lockdReplica, unsupported string, err error) {
	if d.noBackend != "" {
		return nil, "", errors.New(d.noBackend)
	}
	b, err := d.newBackend(d.Addrs, nil)
	if err != nil {
		return nil, "", fmt.Errorf("connect lockd to the store: %w", err)
	}
	r, err = startLockd(b)
	if err != nil {
		b.Close()
		return nil, "", err
	}
	if why := primSupport(ctx, r, feature); why != "" {
		r.stop()
		return nil, why, nil
	}
	return r, "", nil
}
