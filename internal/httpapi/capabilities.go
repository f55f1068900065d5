package httpapi

import (
	"net/http"
	"time"

	"github.com/lockd/lockd/backend"
)

// capabilitiesJSON is GET /v1/capabilities: what this lockd's backend
// supports. A null feature answers 501 not_supported on its routes.
type capabilitiesJSON struct {
	Backend  string       `json:"backend"`
	Features featuresJSON `json:"features"`
	// Unsupported says why a feature is left out, when the backend says.
	Unsupported map[string]string `json:"unsupported,omitempty"`
}

type featuresJSON struct {
	Locks       locksFeature               `json:"locks"`
	Idempotency *struct{}                  `json:"idempotency"`
	Elections   *backend.ElectionFeatures  `json:"elections"`
	Sessions    *backend.SessionFeatures   `json:"sessions"`
	Events      *backend.WatchFeatures     `json:"events"`
	RWLocks     *backend.RWFeatures        `json:"rwlocks"`
	Semaphores  *backend.SemaphoreFeatures `json:"semaphores"`
	LockDelay   *lockDelayCapabilities     `json:"lock_delay"`
}

type locksFeature struct {
	FIFO bool `json:"fifo"`
	// NoFIFOReason says why waiters are not served in arrival order.
	NoFIFOReason string `json:"no_fifo_reason,omitempty"`
}

// capabilitiesOf reads the features off b by type assertion, so that what
// is shown is what the routes will do.
func capabilitiesOf(name string, b backend.Backend, defaultDelay time.Duration) capabilitiesJSON {
	c := capabilitiesJSON{Backend: name, Features: featuresJSON{Locks: locksFeature{FIFO: true}}}
	if u, ok := b.(backend.Unordered); ok {
		c.Features.Locks = locksFeature{FIFO: false, NoFIFOReason: u.NoFIFO()}
	}
	if _, ok := b.(backend.Idempotent); ok {
		c.Features.Idempotency = &struct{}{}
	}
	if ss := sessionsOf(b); ss != nil {
		f := ss.Features()
		c.Features.Sessions = &f
	}
	if e := elections(b); e != nil {
		f := e.Features()
		c.Features.Elections = &f
	}
	if w, ok := b.(backend.Watcher); ok {
		f := w.WatchFeatures()
		c.Features.Events = &f
	}
	if sm := semaphoresOf(b); sm != nil {
		f := sm.Features()
		c.Features.Semaphores = &f
	}
	if rw := rwlocksOf(b); rw != nil {
		f := rw.Features()
		c.Features.RWLocks = &f
	}
	if d, ok := b.(backend.LockDelayer); ok {
		c.Features.LockDelay = &lockDelayCapabilities{LockDelayFeatures: d.LockDelay(), DefaultMs: defaultDelay.Milliseconds()}
	}
	if u, ok := b.(backend.Unsupported); ok {
		c.Unsupported = u.Unsupported()
	}
	return c
}

// elections is b's elections, or nil when it has none.
func elections(b backend.Backend) backend.Elections {
	if el, ok := b.(backend.Elector); ok {
		return el.Elections()
	}
	return nil
}

func (s *Server) capabilities(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, capabilitiesOf(s.opts.Backend, s.b, s.opts.LockDelay))
}

// errNotSupported answers the routes of a feature the backend lacks.
func errNotSupported(feature string) error {
	return &requestError{status: http.StatusNotImplemented, code: "not_supported",
		detail: "this lockd's backend does not support " + feature + " (see GET /v1/capabilities)"}
}
