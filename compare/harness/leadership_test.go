package harness

import (
	"context"
	"time"

	"github.com/lockd/lockd/backend"
)

// breakElections returns b with its locks intact and its elections broken
// by one of the lock mutations: the election calls are presented as lock
// calls (campaign = acquire, renew = renew, resign = release), broken by
// mutate, and presented back as elections. So "grants twice" elects twice,
// "hands out a lower token" hands out a lower term.
func breakElections(b backend.Backend, mutate func(backend.Backend) backend.Backend) backend.Backend {
	el := b.(backend.Elector).Elections()
	broken := mutate(electionsAsLocks{Backend: b, el: el})
	return brokenElector{Backend: b, el: locksAsElections{Elections: el, b: broken}}
}

// brokenElector is a backend whose elections are el.
type brokenElector struct {
	backend.Backend
	el backend.Elections
}

func (b brokenElector) Elections() backend.Elections { return b.el }

// electionsAsLocks presents el's campaigns as lock calls; every other call
// goes to the real backend (the mutations call none).
type electionsAsLocks struct {
	backend.Backend
	el backend.Elections
}

func grantOf(l backend.Leadership) backend.Grant {
	return backend.Grant{Key: l.Name, LeaseID: l.LeaseID, Token: l.Term, Owner: l.Owner, TTL: l.TTL, ExpiresAt: l.ExpiresAt}
}

func (e electionsAsLocks) Acquire(ctx context.Context, req backend.AcquireRequest) (backend.Grant, error) {
	l, err := e.el.Campaign(ctx, backend.CampaignRequest{Name: req.Key, Owner: req.Owner, Value: req.Owner, TTL: req.TTL, Wait: req.Wait})
	return grantOf(l), err
}

func (e electionsAsLocks) Renew(ctx context.Context, key, id string, ttl time.Duration) (backend.Grant, error) {
	l, err := e.el.Renew(ctx, key, id, ttl)
	return grantOf(l), err
}

func (e electionsAsLocks) Release(ctx context.Context, key, id string) error {
	return e.el.Resign(ctx, key, id)
}

// locksAsElections presents b's lock calls as campaigns; Proclaim, Leader,
// Observe and Features are the real elections'.
type locksAsElections struct {
	backend.Elections
	b backend.Backend
}

func leadershipOf(g backend.Grant) backend.Leadership {
	return backend.Leadership{Name: g.Key, LeaseID: g.LeaseID, Term: g.Token, Owner: g.Owner, Value: g.Owner, TTL: g.TTL, ExpiresAt: g.ExpiresAt}
}

func (l locksAsElections) Campaign(ctx context.Context, req backend.CampaignRequest) (backend.Leadership, error) {
	g, err := l.b.Acquire(ctx, backend.AcquireRequest{Key: req.Name, Owner: req.Owner, TTL: req.TTL, Wait: req.Wait})
	return leadershipOf(g), err
}

func (l locksAsElections) Renew(ctx context.Context, name, id string, ttl time.Duration) (backend.Leadership, error) {
	g, err := l.b.Renew(ctx, name, id, ttl)
	return leadershipOf(g), err
}

func (l locksAsElections) Resign(ctx context.Context, name, id string) error {
	return l.b.Release(ctx, name, id)
}
