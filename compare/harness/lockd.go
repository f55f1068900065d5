package harness

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/httpapi"
)

// lockdHandler builds lockd's HTTP API over a backend. When it is nil
// (-no-http), lockd is driven through the backend contract in process, and
// the report says so.
var lockdHandler = func(b backend.Backend) http.Handler {
	return httpapi.New(b, httpapi.Options{Backend: "compare", Logger: lockdLog})
}

// lockdLog receives lockd's own warnings (compare.log).
var lockdLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// The two ways lockd is driven: over its HTTP API, and through the backend
// contract in process (HTTP's cost left out).
const (
	ViaHTTP     = "lockd (HTTP)"
	ViaContract = "lockd (contract, no HTTP)"
)

// ViaLockd names how lockd is driven by default in this run (-no-http:
// in process).
func ViaLockd() string {
	if lockdHandler != nil {
		return ViaHTTP
	}
	return ViaContract
}

// lockdReplica is one lockd: the backend under test behind lockd's HTTP API
// on a loopback port, in this process.
type lockdReplica struct {
	b   backend.Backend
	srv *http.Server
	url string

	mu     sync.Mutex
	killed bool
	locker Locker
	// gate holds requests and replies while the replica is paused.
	gate gate
}

// gate stands for a stopped process (SIGSTOP): while it is shut, requests
// wait before they are handled and replies wait before they are written.
type gate struct {
	mu sync.Mutex
	ch chan struct{} // open while paused
}

func (g *gate) wait(ctx context.Context) {
	g.mu.Lock()
	ch := g.ch
	g.mu.Unlock()
	if ch != nil {
		select {
		case <-ch:
		case <-ctx.Done():
		}
	}
}

func (g *gate) pause() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ch == nil {
		g.ch = make(chan struct{})
	}
}

func (g *gate) resume() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ch != nil {
		close(g.ch)
		g.ch = nil
	}
}

// gated holds a replica's HTTP traffic at its gate.
type gated struct {
	h http.Handler
	g *gate
}

func (h gated) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.g.wait(r.Context())
	h.h.ServeHTTP(&heldWriter{ResponseWriter: w, g: h.g, ctx: r.Context()}, r)
}

// heldWriter makes a reply wait at the gate before it leaves.
type heldWriter struct {
	http.ResponseWriter
	g   *gate
	ctx context.Context
}

func (w *heldWriter) WriteHeader(code int) {
	w.g.wait(w.ctx)
	w.ResponseWriter.WriteHeader(code)
}

func (w *heldWriter) Write(b []byte) (int, error) {
	w.g.wait(w.ctx)
	return w.ResponseWriter.Write(b)
}

func (w *heldWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func startLockd(b backend.Backend) (*lockdReplica, error) {
	return startLockdAs(b, lockdHandler != nil)
}

// startLockdAs starts a replica served over HTTP, or driven in process.
func startLockdAs(b backend.Backend, overHTTP bool) (*lockdReplica, error) {
	r := &lockdReplica{b: b}
	if !overHTTP || lockdHandler == nil {
		r.locker = &guardedLocker{r: r, Locker: contractLocker{b: b}}
		return r, nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r.srv = &http.Server{Handler: gated{h: lockdHandler(b), g: &r.gate}, ReadHeaderTimeout: 5 * time.Second}
	r.url = "http://" + ln.Addr().String()
	go r.srv.Serve(ln)
	r.locker = newHTTPLocker(r.url)
	return r, nil
}

// Locker returns a client of this replica. Over HTTP each call returns a
// fresh client (its own connection pool), as separate processes would have.
func (r *lockdReplica) Locker() Locker {
	if r.srv != nil {
		return newHTTPLocker(r.url)
	}
	return r.locker
}

// kill stops the replica abruptly: connections are cut, in-flight long
// polls die, the backend's connections close. Its grants live on in the
// store.
func (r *lockdReplica) kill() {
	r.mu.Lock()
	r.killed = true
	r.mu.Unlock()
	r.gate.resume()
	if r.srv != nil {
		r.srv.Close()
	}
	r.b.Close()
}

// stop shuts the replica down gracefully, as cmd/lockd does: long polls
// end first, then the server.
func (r *lockdReplica) stop() {
	if r.srv != nil {
		r.gate.resume()
		if s, ok := r.srv.Handler.(gated).h.(*httpapi.Server); ok {
			s.Stopping()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		r.srv.Shutdown(ctx)
		cancel()
	}
	r.b.Close()
}

// guardedLocker makes a killed in-process replica refuse calls like a dead
// process would, instead of calling into a closed backend.
type guardedLocker struct {
	r *lockdReplica
	Locker
}

func (g *guardedLocker) dead() bool {
	g.r.mu.Lock()
	defer g.r.mu.Unlock()
	return g.r.killed
}

func (g *guardedLocker) Acquire(ctx context.Context, key, owner string, ttl, wait time.Duration) (*Lease, error) {
	if g.dead() {
		return nil, errReplicaDead
	}
	g.r.gate.wait(ctx)
	l, err := g.Locker.Acquire(ctx, key, owner, ttl, wait)
	g.r.gate.wait(ctx)
	return l, err
}

func (g *guardedLocker) Release(ctx context.Context, l *Lease) error {
	if g.dead() {
		return errReplicaDead
	}
	g.r.gate.wait(ctx)
	return g.Locker.Release(ctx, l)
}

var errReplicaDead = &net.OpError{Op: "dial", Net: "tcp", Err: &net.AddrError{Err: "lockd replica killed"}}
