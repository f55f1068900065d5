package httpapi

import (
	"errors"
	"net/http"
	"time"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

// lockDelayJSON is a lock-delay in force, in a refusal's problem and in
// inspection.
type lockDelayJSON struct {
	Until        string `json:"until"`
	ExpiredToken uint64 `json:"expired_token"`
}

func toLockDelayJSON(d *backend.Delay) *lockDelayJSON {
	if d == nil {
		return nil
	}
	return &lockDelayJSON{Until: lease.Format(d.Until), ExpiredToken: d.ExpiredToken}
}

// delayOfRefusal is the lock-delay that kept an acquire or a campaign out,
// if one did.
func delayOfRefusal(err error) *backend.Delay {
	var he *backend.HeldError
	if errors.As(err, &he) {
		return he.Delay
	}
	var se *backend.SemaphoreHeldError
	if errors.As(err, &se) {
		return se.Delay
	}
	var re *backend.RWHeldError
	if errors.As(err, &re) {
		return re.Delay
	}
	var ne *backend.NotLeaderError
	if errors.As(err, &ne) {
		return ne.Delay
	}
	return nil
}

// delayedUntil is inspection's delayed_until: absent when no delay is in
// force.
func delayedUntil(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := lease.Format(t)
	return &s
}

// lockDelayFor is the lock-delay an acquire of primitive gets: the one it
// asked for, which the backend must keep (501 otherwise), or lockd's
// default where the backend keeps it.
func (s *Server) lockDelayFor(p acquireParams, primitive string) (time.Duration, error) {
	kept := backend.LockDelaysOf(s.b).Has(primitive)
	if !p.lockDelaySet {
		if kept {
			return s.opts.LockDelay, nil
		}
		return 0, nil
	}
	if p.lockDelay > 0 && !kept {
		detail := "this lockd's backend does not keep lock-delays on " + primitive
		if u, ok := s.b.(backend.Unsupported); ok {
			if why := u.Unsupported()[backend.LockDelayFeature(primitive)]; why != "" {
				detail += ": " + why
			}
		}
		return 0, &requestError{status: http.StatusNotImplemented, code: "not_supported", detail: detail + " (see GET /v1/capabilities; send lock_delay_ms 0 or leave it out)"}
	}
	return p.lockDelay, nil
}

// lockDelayCapabilities is GET /v1/capabilities' lock_delay: what the
// backend delays and lockd's default; nil when it delays nothing.
type lockDelayCapabilities struct {
	backend.LockDelayFeatures
	DefaultMs int64 `json:"default_ms"`
}
