package httpapi

import (
	"context"
	"net/http"
	"time"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/auth"
)

// orphanReleaseTimeout bounds the release of a grant whose client left.
const orphanReleaseTimeout = 5 * time.Second

// releaseOrphan releases g, granted to a client that has gone (its request
// context ended as the backend granted). This is the one place that does
// it, for every backend: a backend may return a grant that raced with the
// cancellation, and writing it to a closed connection would leave the key
// blocked for a TTL. The release runs on its own deadline, since the
// request's context is over; if it fails, the lease still expires.
func (s *Server) releaseOrphan(r *http.Request, who *auth.Principal, g backend.Grant, release func(ctx context.Context, key, leaseID string) error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), orphanReleaseTimeout)
	defer cancel()
	err := release(ctx, g.Key, g.LeaseID)
	if s.leaseLimit(who) > 0 {
		s.leases.released(who.Name, g.Key, g.LeaseID)
	}
	code := "released"
	if err != nil {
		code = problemFor(err).Code
		s.log.Warn("releasing a grant whose client left", "key", g.Key, "token", g.Token, "err", err)
	}
	s.audit("orphan_released", r, "key", g.Key, "token", g.Token, "lease", leaseHash(g.LeaseID), "result", code)
}
