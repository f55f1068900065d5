package redlock

// Counting semaphores as N slot mutexes: a permit of a semaphore of size N
// is slot k's Redlock mutex, for some k in 0..N-1, held on a majority of
// the masters exactly as a lock is. An acquire tries the slots in turn from
// a random one, each with one Redlock attempt, until it wins one or finds
// every slot held by another lease on a majority. So at most N permits
// hold at once, and no two share a slot, under the conditions that keep
// Redlock's mutual exclusion (see the package comment); the failures that
// break Redlock's locks — a master restarted empty, a clock jump — can
// overcommit a semaphore the same way.
//
// Layout on each master, under <Prefix>s:{<key>}: (one hash tag):
//
//	<k>     slot k's hash {id, owner, token, exp, ttl}, PX = its TTL
//	fence   one counter for every slot, raised to the majority's maximum
//	        as a lock's is; a permit's token is that count × MaxPermits +
//	        its slot, so it increases over all permits of the key (and per
//	        slot), and two permits granted at once (on two slots, whose
//	        majorities may reach the same count) never share one — with a
//	        Redlock token's caveat: NOT safe under failures
//	live    zset slot -> this master's deadline for its copy (TIME)
//	n       the size of the live permits on this master
//
// There is no queue: waiters retry with jittered back-off as lock waiters
// do, so they are not served in arrival order (Features FIFO false), and
// nothing counts them. The size is checked per master: a master with a live
// permit of another size refuses, and an acquire that cannot win a majority
// because of such refusals fails with ErrPermitsMismatch. An acquire costs
// one Redlock round per slot it tries: up to N rounds when the semaphore is
// full.

import (
	"context"
	_ "embed"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/backend/redis/internal/store"
	"github.com/lockd/lockd/internal/lease"
)

var (
	//go:embed scripts/sem_acquire.lua
	semAcquireLua string
	//go:embed scripts/sem_release.lua
	semReleaseLua string
	//go:embed scripts/sem_renew.lua
	semRenewLua string
	//go:embed scripts/sem_inspect.lua
	semInspectLua string

	semAcquireScript = goredis.NewScript(semAcquireLua)
	semReleaseScript = goredis.NewScript(semReleaseLua)
	semRenewScript   = goredis.NewScript(semRenewLua)
	semInspectScript = goredis.NewScript(semInspectLua)
)

var _ backend.Semaphorer = (*Backend)(nil)

// NoSemaphoreFIFO is why Redlock's semaphores do not serve waiters in
// arrival order.
const NoSemaphoreFIFO = "Redlock has no queue: a waiter for a permit retries with jittered back-off, and whoever tries first after a slot frees wins it"

// Semaphores implements backend.Semaphorer.
func (b *Backend) Semaphores() backend.Semaphores { return semaphores{b} }

type semaphores struct{ b *Backend }

func (semaphores) Features() backend.SemaphoreFeatures { return backend.SemaphoreFeatures{} }

func (b *Backend) semBase(key string) string { return store.Base(b.prefix+"s:", key) }

// slotTarget is slot k of the semaphore key (size n, for an acquire).
func (b *Backend) slotTarget(key string, k, n int, owner string, ttl time.Duration) target {
	base := b.semBase(key)
	ks := strconv.Itoa(k)
	keys := []string{base + ks, base + "fence", base + "live", base + "n"}
	return target{key: key, keys: keys,
		acquire: func(c context.Context, m goredis.UniversalClient, id string, deadline time.Time) ([]any, error) {
			return semAcquireScript.Run(c, m, keys, id, owner, store.Ms(ttl), deadline.UnixMilli(), n, ks).Slice()
		},
		release: func(c context.Context, m goredis.UniversalClient, id string) (int, error) {
			return semReleaseScript.Run(c, m, []string{keys[0], keys[2], keys[3]}, id, ks).Int()
		},
	}
}

// Acquire implements backend.Semaphores.
func (s semaphores) Acquire(ctx context.Context, req backend.SemaphoreRequest) (backend.Permit, error) {
	b := s.b
	if err := ctx.Err(); err != nil {
		return backend.Permit{}, err
	}
	if req.Session != "" {
		return backend.Permit{}, fmt.Errorf("redlock: %s: %w", NoSessions, backend.ErrSessionExpired)
	}
	giveUpAt := time.Now().Add(req.Wait)
	delay := b.opts.MinRetryDelay
	splits := 0
	for {
		p, f, err := s.round(ctx, req)
		if err != nil {
			return backend.Permit{}, err
		}
		if f == nil {
			return p, nil
		}
		left := time.Until(giveUpAt)
		if left <= 0 && splits < maxSplitRetries && (f.split && f.unavailable == nil || f.slow && splits < 3) {
			splits++
			left = delay
		}
		if left <= 0 {
			if f.unavailable != nil {
				return backend.Permit{}, f.unavailable
			}
			return backend.Permit{}, &backend.SemaphoreHeldError{Key: req.Key, Permits: req.Permits, Holders: f.holders}
		}
		sleep := delay/2 + rand.N(delay/2+1)
		delay = min(2*delay, b.opts.MaxRetryDelay)
		if f.first != nil {
			if d := time.Until(*f.first) + time.Millisecond; d > 0 && d < sleep {
				sleep = d
			}
		}
		t := time.NewTimer(min(sleep, left))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return backend.Permit{}, ctx.Err()
		case <-b.life.Done():
			t.Stop()
			return backend.Permit{}, errClosed
		}
	}
}

// roundFailed is why a round over every slot granted nothing.
type roundFailed struct {
	holders     []backend.SemaphoreHolder // the slots held by a majority
	first       *time.Time                // the earliest of their deadlines
	unavailable error
	split, slow bool // some slot had no majority holder, or came too late
}

// round tries every slot once, from a random one, and returns the first
// permit won.
func (s semaphores) round(ctx context.Context, req backend.SemaphoreRequest) (backend.Permit, *roundFailed, error) {
	b := s.b
	n := req.Permits
	from := rand.N(n)
	rf := &roundFailed{holders: []backend.SemaphoreHolder{}}
	for i := range n {
		k := (from + i) % n
		g, f, err := b.try(ctx, b.slotTarget(req.Key, k, n, req.Owner, req.TTL), req.Owner, req.TTL)
		if err != nil {
			return backend.Permit{}, nil, err
		}
		if f == nil {
			g.LeaseID += "." + strconv.Itoa(k)
			g.Token = permitToken(g.Token, k)
			return backend.Permit{Grant: g, Slot: k, Permits: n}, nil, nil
		}
		size, most, refused := 0, 0, 0
		for sz, c := range f.mismatch {
			refused += c
			if c > most {
				size, most = sz, c
			}
		}
		if refused > len(b.masters)-b.quorum {
			// Refused for its size by masters enough to deny any majority.
			return backend.Permit{}, nil, &backend.PermitsMismatchError{Key: req.Key, Permits: size}
		}
		switch {
		case f.unavailable != nil && !f.slow:
			rf.unavailable = f.unavailable
		case f.slow:
			rf.slow = true
		case f.split:
			rf.split = true
		case f.holder != nil:
			h := f.holder
			rf.holders = append(rf.holders, backend.SemaphoreHolder{Slot: k, Owner: h.Owner, Token: permitToken(h.Token, k), ExpiresAt: h.ExpiresAt})
			if rf.first == nil || h.ExpiresAt.Before(*rf.first) {
				rf.first = &h.ExpiresAt
			}
		}
	}
	sortHolders(rf.holders)
	return backend.Permit{}, rf, nil
}

// permitToken is the token of a permit of slot k whose mutex has count c.
func permitToken(c uint64, k int) uint64 { return c*backend.MaxPermits + uint64(k) }

func sortHolders(hs []backend.SemaphoreHolder) {
	for i := 1; i < len(hs); i++ {
		for j := i; j > 0 && hs[j].Slot < hs[j-1].Slot; j-- {
			hs[j], hs[j-1] = hs[j-1], hs[j]
		}
	}
}

// permitLease splits a permit's lease id into the slot mutex's lease id and
// the slot.
func permitLease(leaseID string) (id string, slot int, ok bool) {
	i := strings.LastIndexByte(leaseID, '.')
	if i <= 0 || !lease.ValidID(leaseID) {
		return "", 0, false
	}
	n, err := strconv.Atoi(leaseID[i+1:])
	if err != nil || n < 0 || n >= backend.MaxPermits || strconv.Itoa(n) != leaseID[i+1:] {
		return "", 0, false
	}
	return leaseID[:i], n, true
}

// Renew implements backend.Semaphores: the slot mutex's renew.
func (s semaphores) Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (backend.Permit, error) {
	id, k, ok := permitLease(leaseID)
	if !ok {
		return backend.Permit{}, fmt.Errorf("redlock renew permit of %q: %w", key, backend.ErrLeaseExpired)
	}
	t := s.b.slotTarget(key, k, 0, "", 0)
	keys := []string{t.keys[0], t.keys[2], t.keys[3]}
	g, size, err := s.b.renewOn(ctx, t, id, ttl, func(c context.Context, m goredis.UniversalClient, ttlMS int64, start time.Time) (any, error) {
		return semRenewScript.Run(c, m, keys, id, ttlMS, start.UnixMilli(), strconv.Itoa(k)).Result()
	})
	if err != nil {
		return backend.Permit{}, err
	}
	g.LeaseID, g.Token = leaseID, permitToken(g.Token, k)
	return backend.Permit{Grant: g, Slot: k, Permits: int(size)}, nil
}

// Release implements backend.Semaphores: the slot mutex's release.
func (s semaphores) Release(ctx context.Context, key, leaseID string) error {
	id, k, ok := permitLease(leaseID)
	if !ok {
		return fmt.Errorf("redlock release permit of %q: %w", key, backend.ErrLeaseExpired)
	}
	return s.b.releaseMajority(ctx, s.b.slotTarget(key, k, 0, "", 0), id)
}

// Inspect implements backend.Semaphores: a slot is held when a majority of
// masters hold it for the same lease; the size is the one a majority of
// masters with live permits report. Waiters are not counted (no queue).
func (s semaphores) Inspect(ctx context.Context, key string) (backend.SemaphoreState, error) {
	b := s.b
	base := b.semBase(key)
	replies := b.each(ctx, func(c context.Context, m goredis.UniversalClient) (any, error) {
		return semInspectScript.Run(c, m, []string{base + "live", base + "n"}, base).Slice()
	})
	type slotLease struct {
		slot int
		id   string
	}
	votes := map[slotLease]int{}
	holders := map[slotLease]*backend.SemaphoreHolder{}
	sizes := map[int]int{}
	answered := 0
	for _, r := range replies {
		if r.err != nil {
			continue
		}
		answered++
		res := r.v.([]any)
		if n := int(store.Int(res[0])); n > 0 {
			sizes[n]++
		}
		for i := 1; i+4 < len(res); i += 5 {
			sl := slotLease{int(store.Int(res[i])), store.Str(res[i+1])}
			votes[sl]++
			h := holders[sl]
			if h == nil {
				h = &backend.SemaphoreHolder{Slot: sl.slot, Owner: store.Str(res[i+2])}
				holders[sl] = h
			}
			h.Token = max(h.Token, uint64(store.Int(res[i+3])))
			if e := time.UnixMilli(store.Int(res[i+4])); h.ExpiresAt.IsZero() || e.Before(h.ExpiresAt) {
				h.ExpiresAt = e
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return backend.SemaphoreState{}, err
	}
	if answered < b.quorum {
		return backend.SemaphoreState{}, fmt.Errorf("redlock inspect semaphore %q: %w: %d of %d masters answered", key, backend.ErrUnavailable, answered, len(b.masters))
	}
	st := backend.SemaphoreState{Key: key, Holders: []backend.SemaphoreHolder{}}
	for sl, n := range votes {
		if n >= b.quorum {
			h := *holders[sl]
			h.Token = permitToken(h.Token, h.Slot)
			st.Holders = append(st.Holders, h)
		}
	}
	sortHolders(st.Holders)
	if len(st.Holders) > 0 {
		for n, c := range sizes {
			if c > sizes[st.Permits] {
				st.Permits = n
			}
		}
	}
	return st, nil
}
