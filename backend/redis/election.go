package redis

// Leader elections: the Redis lock in its own key namespace
// (<Prefix>e:{<name>}:...), whose grant also holds the leader's value. The
// term is the grant's fencing token; proclaim is a script guarded by the
// lease id; observe follows the election's event log (events.go).

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/backend/redis/internal/store"
)

var _ backend.Elector = (*Backend)(nil)

// Elections implements backend.Elector.
func (b *Backend) Elections() backend.Elections { return elections{b} }

type elections struct{ b *Backend }

func (el elections) Features() backend.ElectionFeatures {
	return backend.ElectionFeatures{Observe: "watch"}
}

func leadership(name, value string, g backend.Grant) backend.Leadership {
	return backend.Leadership{Name: name, LeaseID: g.LeaseID, Term: g.Token, Owner: g.Owner, Value: value, TTL: g.TTL, ExpiresAt: g.ExpiresAt}
}

// Campaign implements backend.Elections: an acquire in the election
// namespace, writing the value with the grant.
func (el elections) Campaign(ctx context.Context, req backend.CampaignRequest) (backend.Leadership, error) {
	// The acquire script's sixth key is an idempotency record; campaigns
	// carry none, so it is never written.
	keys := append(el.b.keysIn(electionNS, req.Name), el.b.prefix+electionNS+"{"+req.Name+"}:i:")
	g, err := el.b.acquire(ctx, keys, backend.AcquireRequest{Key: req.Name, Owner: req.Owner, TTL: req.TTL, Wait: req.Wait, Session: req.Session, LockDelay: req.LockDelay}, req.Value)
	if errors.Is(err, backend.ErrHeld) {
		ne := &backend.NotLeaderError{Name: req.Name}
		var he *backend.HeldError
		if errors.As(err, &he) {
			ne.Delay = he.Delay
		}
		if st, lerr := el.Leader(ctx, req.Name); lerr == nil {
			ne.Leader = st.Leader
		}
		return backend.Leadership{}, ne
	}
	if err != nil {
		return backend.Leadership{}, err
	}
	return leadership(req.Name, req.Value, g), nil
}

// Proclaim implements backend.Elections.
func (el elections) Proclaim(ctx context.Context, name, leaseID, value string) (backend.Leadership, error) {
	g, v, err := el.b.update(ctx, proclaimScript, "proclaim", electionNS, name, leaseID, value)
	if err != nil {
		return backend.Leadership{}, err
	}
	return leadership(name, v, g), nil
}

// Renew implements backend.Elections.
func (el elections) Renew(ctx context.Context, name, leaseID string, ttl time.Duration) (backend.Leadership, error) {
	ttlMS := int64(0)
	if ttl > 0 {
		ttlMS = store.Ms(ttl)
	}
	g, v, err := el.b.update(ctx, renewScript, "renew", electionNS, name, leaseID, ttlMS)
	if err != nil {
		return backend.Leadership{}, err
	}
	return leadership(name, v, g), nil
}

// Resign implements backend.Elections.
func (el elections) Resign(ctx context.Context, name, leaseID string) error {
	return el.b.release(ctx, electionNS, name, leaseID)
}

// Leader implements backend.Elections.
func (el elections) Leader(ctx context.Context, name string) (backend.ElectionState, error) {
	s, err := el.b.look(ctx, el.b.keysIn(electionNS, name))
	if err != nil {
		return backend.ElectionState{}, err
	}
	return backend.ElectionState{Name: name, Leader: s.leader(), Candidates: s.Waiters, DelayedUntil: s.DelayedUntil}, nil
}

func (s snapshot) leader() *backend.Leader {
	if s.Token == 0 {
		return nil
	}
	return &backend.Leader{Term: s.Token, Owner: s.Owner, Value: s.Value, ExpiresAt: s.ExpiresAt}
}

// Observe implements backend.Elections: the state first, then one event per
// log entry (acquired and proclaimed are leader events, released and
// expired no_leader events).
func (el elections) Observe(ctx context.Context, name string) (<-chan backend.ElectionEvent, error) {
	f, s, err := el.b.follow(ctx, electionNS, name)
	if err != nil {
		return nil, err
	}
	out := make(chan backend.ElectionEvent, 16)
	send := func(ctx context.Context, ev backend.ElectionEvent) error {
		select {
		case out <- ev:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	run := func(ctx context.Context) error {
		first := backend.ElectionEvent{Leader: s.leader()}
		maxTerm := s.Token
		if s.Token == 0 {
			first.NoLeader = &backend.NoLeader{}
			if r := reason(s.Last.Kind); r != "" {
				first.NoLeader = &backend.NoLeader{LastTerm: s.Last.Token, Reason: r}
				maxTerm = s.Last.Token
			}
		}
		if err := send(ctx, first); err != nil {
			return err
		}
		for {
			entries, err := f.next(ctx)
			if err != nil {
				return err
			}
			for _, e := range entries {
				if e.Token < maxTerm {
					// Only a log that was lost and written afresh goes back.
					return fmt.Errorf("redis: %w: election %q went back from term %d to %d", backend.ErrUnavailable, name, maxTerm, e.Token)
				}
				maxTerm = e.Token
				var ev backend.ElectionEvent
				if r := reason(e.Kind); r != "" {
					ev.NoLeader = &backend.NoLeader{LastTerm: e.Token, Reason: r}
				} else {
					ev.Leader = &backend.Leader{Term: e.Token, Owner: e.Owner, Value: e.Value, ExpiresAt: e.ExpiresAt}
				}
				if err := send(ctx, ev); err != nil {
					return err
				}
			}
		}
	}
	end := func(err error) {
		select {
		case out <- backend.ElectionEvent{Err: err}:
		case <-time.After(time.Second): // nobody reads any more
		}
		close(out)
	}
	if err := el.b.stream(ctx, run, end); err != nil {
		return nil, err
	}
	return out, nil
}

// reason is the no_leader reason of a log entry's kind; "" for a leader.
func reason(kind string) string {
	switch kind {
	case entryReleased:
		return backend.ReasonResigned
	case entryExpired:
		return backend.ReasonExpired
	}
	return ""
}
