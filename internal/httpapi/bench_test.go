package httpapi

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/client"
	"github.com/lockd/lockd/internal/lease"
)

// memBackend is an in-memory backend.Backend for BenchmarkAcquireHandler
// only: it measures the handler path without a store's cost. Tests use
// real servers. It keeps one grant per key, never waits, and hands out one
// fixed lease id, so that the benchmark's release body is fixed too.
type memBackend struct {
	mu    sync.Mutex
	held  map[string]backend.Grant
	token uint64
}

var benchLeaseID = lease.NewID()

func (m *memBackend) Acquire(_ context.Context, req backend.AcquireRequest) (backend.Grant, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if g, ok := m.held[req.Key]; ok {
		return backend.Grant{}, &backend.HeldError{Key: req.Key, Holder: &backend.Holder{Owner: g.Owner, Token: g.Token, ExpiresAt: g.ExpiresAt}}
	}
	m.token++
	g := backend.Grant{Key: req.Key, LeaseID: benchLeaseID, Token: m.token, Owner: req.Owner, TTL: req.TTL, ExpiresAt: time.Now().Add(req.TTL)}
	m.held[req.Key] = g
	return g, nil
}

func (m *memBackend) Renew(_ context.Context, key, id string, ttl time.Duration) (backend.Grant, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	g, ok := m.held[key]
	if !ok || g.LeaseID != id {
		return backend.Grant{}, backend.ErrLeaseExpired
	}
	if ttl > 0 {
		g.TTL = ttl
	}
	g.ExpiresAt = time.Now().Add(g.TTL)
	m.held[key] = g
	return g, nil
}

func (m *memBackend) Release(_ context.Context, key, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if g, ok := m.held[key]; !ok || g.LeaseID != id {
		return backend.ErrLeaseExpired
	}
	delete(m.held, key)
	return nil
}

func (m *memBackend) Inspect(_ context.Context, key string) (backend.LockState, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	g, ok := m.held[key]
	if !ok {
		return backend.LockState{Key: key}, nil
	}
	return backend.LockState{Key: key, Held: true, Holder: &backend.Holder{Owner: g.Owner, Token: g.Token, ExpiresAt: g.ExpiresAt}}, nil
}

func (m *memBackend) List(context.Context, string, string, int) ([]backend.LockState, error) {
	return nil, nil
}
func (m *memBackend) Ping(context.Context) error { return nil }
func (m *memBackend) Close() error               { return nil }

// benchWriter is a ResponseWriter that keeps only the status and body, so
// that what the benchmark counts is the handler's.
type benchWriter struct {
	h      http.Header
	status int
	body   bytes.Buffer
}

func (w *benchWriter) Header() http.Header { return w.h }
func (w *benchWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}
func (w *benchWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.body.Write(p)
}

// SetReadDeadline is there because the servers' writers have it (HTTP/1
// and HTTP/2): without it ResponseController would make an error per call.
func (w *benchWriter) SetReadDeadline(time.Time) error { return nil }

func (w *benchWriter) reset() {
	clear(w.h)
	w.status = 0
	w.body.Reset()
}

// benchRequest is one request sent again and again: only its body is
// rewound.
type benchRequest struct {
	r    *http.Request
	body []byte
	rd   bytes.Reader
}

func newBenchRequest(path, body string) *benchRequest {
	br := &benchRequest{r: httptest.NewRequest(http.MethodPost, path, nil), body: []byte(body)}
	br.r.Header.Set("Content-Type", "application/json")
	return br
}

func (br *benchRequest) send(s *Server, w *benchWriter) {
	br.rd.Reset(br.body)
	br.r.Body = io.NopCloser(&br.rd)
	w.reset()
	s.ServeHTTP(w, br.r)
}

// BenchmarkAcquireHandler runs an uncontended acquire and its release
// through the real router, middleware and handlers, over memBackend, at the
// default log level (info: the debug request line is not written). Run with
// -benchmem: allocs/op is the handler path's allocations.
func BenchmarkAcquireHandler(b *testing.B) {
	mem := &memBackend{held: map[string]backend.Grant{}}
	log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	s := New(mem, Options{Backend: "mem", Logger: log})
	acq := newBenchRequest("/v1/locks/bench:key/acquire", `{"ttl_ms": 15000, "owner": "bench"}`)
	rel := newBenchRequest("/v1/locks/bench:key/release", `{"lease_id": "`+benchLeaseID+`"}`)
	w := &benchWriter{h: http.Header{}}

	b.Run("acquire", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			acq.send(s, w)
			if w.status != http.StatusOK {
				b.Fatalf("acquire: %d %s", w.status, w.body.String())
			}
			if err := mem.Release(context.Background(), "bench:key", benchLeaseID); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("acquire+release", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			acq.send(s, w)
			if w.status != http.StatusOK {
				b.Fatalf("acquire: %d %s", w.status, w.body.String())
			}
			rel.send(s, w)
			if w.status != http.StatusNoContent {
				b.Fatalf("release: %d %s", w.status, w.body.String())
			}
		}
	})
}

// BenchmarkLoopbackHop is one acquire + release cycle over real loopback
// TCP (net/http's client and server, HTTP/1.1 keep-alive), through lockd
// over memBackend, beside the same two requests to a handler that answers
// at once: the difference is what lockd's handler path adds to net/http's
// own round trip.
func BenchmarkLoopbackHop(b *testing.B) {
	mem := &memBackend{held: map[string]backend.Grant{}}
	log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	lockd := httptest.NewServer(New(mem, Options{Backend: "mem", Logger: log}))
	defer lockd.Close()
	bare := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte(`{"key":"bench:key","lease_id":"` + benchLeaseID + `","token":1,"owner":"bench","ttl_ms":15000,"expires_at":"2026-12-01T00:00:00.000Z"}` + "\n"))
	}))
	defer bare.Close()
	post := func(b *testing.B, c *http.Client, url, body string, want int) {
		resp, err := c.Post(url, "application/json", bytes.NewReader([]byte(body)))
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want && want != 0 {
			b.Fatalf("%s: %d, want %d", url, resp.StatusCode, want)
		}
	}
	for _, tc := range []struct {
		name string
		srv  *httptest.Server
	}{{"bare", bare}, {"lockd", lockd}} {
		b.Run(tc.name, func(b *testing.B) {
			c := tc.srv.Client()
			b.ReportAllocs()
			for b.Loop() {
				post(b, c, tc.srv.URL+"/v1/locks/bench:key/acquire", `{"ttl_ms": 15000, "owner": "bench"}`, 200)
				post(b, c, tc.srv.URL+"/v1/locks/bench:key/release", `{"lease_id": "`+benchLeaseID+`"}`, 0)
			}
		})
	}
	// The same cycle through lockd's Go client, as compare's HTTP column
	// calls it: what the client adds on top.
	b.Run("lockd+client", func(b *testing.B) {
		c, err := client.New(lockd.URL, nil)
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		b.ReportAllocs()
		for b.Loop() {
			g, err := c.AcquireLease(ctx, "bench:key", client.AcquireOptions{TTL: 15 * time.Second, Owner: "bench"})
			if err != nil {
				b.Fatal(err)
			}
			if err := c.ReleaseLease(ctx, "bench:key", g.LeaseID); err != nil {
				b.Fatal(err)
			}
		}
	})
}
