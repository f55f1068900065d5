package httpapi

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/lockd/lockd/backend"
)

// errClockSkew: this replica's clock is further from the shared reference
// than the declared bound allows; /readyz answers 503 clock_skew.
var errClockSkew = errors.New("clock skew")

// clockWatch is what WatchClock last found.
type clockWatch struct {
	mu  sync.Mutex
	bad error // wraps errClockSkew while the offset is out of bounds
}

func (c *clockWatch) err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bad
}

func (c *clockWatch) set(err error) (changed bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	changed = (c.bad == nil) != (err == nil)
	c.bad = err
	return changed
}

// WatchClock measures this replica's clock against the backend's shared
// reference every `every` until ctx ends, exports the offset, and takes the
// replica out of /readyz while the offset is beyond the bound
// (lease.Clock.OffsetTooLarge). It returns at once when the backend's leases
// do not depend on lockd's clocks (it is no backend.ClockChecker). A reading
// that fails changes nothing: /readyz reports an unreachable store by itself.
func (s *Server) WatchClock(ctx context.Context, every time.Duration) {
	cc, ok := s.b.(backend.ClockChecker)
	if !ok {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		c, cancel := context.WithTimeout(ctx, every)
		r, err := cc.ClockOffset(c)
		cancel()
		if err == nil {
			s.m.clockOffset.Set(r.Offset.Seconds())
			s.m.clockUncertainty.Set(r.Uncertainty.Seconds())
			var bad error
			if s.opts.Clock.OffsetTooLarge(r.Offset) {
				bad = fmt.Errorf("%w: this replica's clock is %v off the %s (±%v); allowed ±%v, half of --max-clock-skew %v",
					errClockSkew, r.Offset.Round(time.Millisecond), r.Reference, r.Uncertainty.Round(time.Millisecond), s.opts.Clock.MaxSkew/2, s.opts.Clock.MaxSkew)
			}
			if s.clock.set(bad) {
				if bad != nil {
					s.log.Error("clock outside the skew bound: not ready until it is back", "offset", r.Offset, "uncertainty", r.Uncertainty, "reference", r.Reference, "max_clock_skew", s.opts.Clock.MaxSkew)
				} else {
					s.log.Info("clock back within the skew bound: ready", "offset", r.Offset, "reference", r.Reference)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
