package redis

// Fair read-write locks, each operation one Lua script (scripts/rw_*.lua)
// on Redis's clock.
//
//	<Prefix>rw:{<key>}:h      hash lease id -> "deadline|mode|token|ttl|owner",
//	                          one field per holder (one writer, or readers)
//	<Prefix>rw:{<key>}:fence  counter, INCR'd by every grant of either mode
//	<Prefix>rw:{<key>}:q      list of "r:<waiter>" / "w:<waiter>": ONE FIFO
//	                          queue for both modes
//	<Prefix>rw:{<key>}:qt     zset entry -> heartbeat deadline
//
// A reader is granted when no writer holds and no live writer waits ahead
// of it; a writer when nobody holds and nobody waits ahead. Each reader's
// deadline is its own field: a renew or an expiry touches no other reader's
// (redisson#2144), and the hash's PEXPIRE is only the latest deadline, for
// garbage collection. A release, or a waiter leaving, publishes every
// waiter that may go now (the readers at the head, or the writer at the
// head), on the wake channel the locks use; a waiter's timer at the earliest
// holder's deadline notices an expiry with no lockd alive. Tokens come from
// one counter, so a write token is above every earlier grant and a read
// token above every earlier writer's.
//
// A grant in a session (one Redis only: sessions.go) has deadline 0 in its
// record and a field "<lease id>:s" naming the session hash, whose deadline
// every script reads as the grant's; the session's close releases it as
// rw_release.lua does (publishing whoever may go now), and its renew moves
// the hash's garbage expiry on.

import (
	"context"
	_ "embed"
	"fmt"
	"sort"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/backend/redis/internal/store"
	"github.com/lockd/lockd/internal/lease"
)

var (
	//go:embed scripts/rw_prelude.lua
	rwPrelude string
	//go:embed scripts/rw_acquire.lua
	rwAcquireLua string
	//go:embed scripts/rw_release.lua
	rwReleaseLua string
	//go:embed scripts/rw_renew.lua
	rwRenewLua string
	//go:embed scripts/rw_abandon.lua
	rwAbandonLua string
	//go:embed scripts/rw_inspect.lua
	rwInspectLua string

	rwAcquireScript = goredis.NewScript(prelude + rwPrelude + rwAcquireLua)
	rwReleaseScript = goredis.NewScript(prelude + rwPrelude + rwReleaseLua)
	rwRenewScript   = goredis.NewScript(prelude + rwPrelude + rwRenewLua)
	rwAbandonScript = goredis.NewScript(prelude + rwPrelude + rwAbandonLua)
	rwInspectScript = goredis.NewScript(prelude + rwPrelude + rwInspectLua)
)

var _ backend.RWLocker = (*Backend)(nil)

// RWLocks implements backend.RWLocker.
func (b *Backend) RWLocks() backend.RWLocks { return rwlocks{b} }

type rwlocks struct{ b *Backend }

func (rw rwlocks) Features() backend.RWFeatures {
	return backend.RWFeatures{Fair: true, Wakeup: "pubsub", Sessions: !rw.b.cluster()}
}

func (b *Backend) rwKeys(key string) []string {
	base := store.Base(b.prefix+"rw:", key)
	return []string{base + "h", base + "fence", base + "q", base + "qt"}
}

func modeLetter(mode string) string {
	if mode == backend.ModeWrite {
		return "w"
	}
	return "r"
}

func modeName(letter string) string {
	if letter == "w" {
		return backend.ModeWrite
	}
	return backend.ModeRead
}

// Acquire implements backend.RWLocks.
func (rw rwlocks) Acquire(ctx context.Context, req backend.RWAcquireRequest) (backend.RWGrant, error) {
	b := rw.b
	if err := ctx.Err(); err != nil {
		return backend.RWGrant{}, err
	}
	keys := b.rwKeys(req.Key)
	var sessWake string
	if req.Session != "" {
		sk, err := b.sessionKey(req.Session)
		if err != nil {
			return backend.RWGrant{}, err
		}
		keys = append(keys, sk) // KEYS[5]
		sessWake = sessionWake(req.Session)
	}
	waiter, wake, done, err := b.mailbox(req.Wait > 0, sessWake)
	if err != nil {
		return backend.RWGrant{}, err
	}
	defer done()
	var entry string
	if waiter != "" {
		entry = modeLetter(req.Mode) + ":" + waiter
	}

	id := lease.NewID()
	giveUpAt := time.Now().Add(req.Wait)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var leaveBeat func()
	for {
		res, err := rwAcquireScript.Run(ctx, b.client, keys, id, req.Owner, store.Ms(req.TTL), waiter, store.Ms(b.beat), modeLetter(req.Mode), req.LockDelay.Milliseconds()).Slice()
		if err != nil {
			// The script may have run (a lost reply): undo what it did.
			b.rwAbandon(keys, entry, id)
			return backend.RWGrant{}, unavailable(ctx, "rw acquire", err)
		}
		switch store.Int(res[0]) {
		case 1:
			if err := ctx.Err(); err != nil { // granted as the caller gave up
				b.rwAbandon(keys, "", id)
				return backend.RWGrant{}, err
			}
			return backend.RWGrant{Mode: req.Mode, Grant: backend.Grant{Key: req.Key, LeaseID: id, Token: uint64(store.Int(res[1])),
				Owner: req.Owner, TTL: time.Duration(store.Int(res[5])) * time.Millisecond, ExpiresAt: time.UnixMilli(store.Int(res[2])),
				Session: store.Int(res[6]) == 1}}, nil
		case -4:
			b.rwAbandon(keys, entry, id)
			return backend.RWGrant{}, fmt.Errorf("redis rw acquire %q: %w", req.Key, backend.ErrSessionExpired)
		}
		if entry != "" && leaveBeat == nil {
			// Queued: our replica's heartbeat for this key keeps the place.
			leaveBeat = b.joinBeat(rwBeatScript, keys[:4], entry, wake)
			defer leaveBeat()
		}
		now := store.Int(res[3])
		next := time.Duration(1<<63 - 1) // only the timers below, and wake-ups
		// Wake up when the earliest holder's lease runs out, or our session
		// (the script then says so), in Redis's time.
		// An expired grant's lock-delay that keeps us out: wake at its end.
		var delay *backend.Delay
		if du := store.Int(res[8]); du > 0 {
			delay = &backend.Delay{Until: time.UnixMilli(du), ExpiredToken: uint64(store.Int(res[9]))}
		}
		for _, at := range []int64{store.Int(res[4]), store.Int(res[7]), store.Int(res[8])} {
			if d := time.Duration(at-now+1) * time.Millisecond; at > 0 && d < next {
				next = d
			}
		}
		left := time.Until(giveUpAt)
		if left <= 0 {
			if entry != "" {
				b.rwAbandon(keys, entry, id)
			}
			he := &backend.RWHeldError{Key: req.Key, Delay: delay}
			if st, err := rw.Inspect(ctx, req.Key); err == nil {
				he.Holders = st.Holders
			}
			return backend.RWGrant{}, he
		}
		timer.Reset(min(next, left))
		select {
		case <-wake:
			timer.Stop()
		case <-timer.C:
		case <-ctx.Done():
			b.rwAbandon(keys, entry, id)
			return backend.RWGrant{}, ctx.Err()
		case <-b.life.Done():
			b.rwAbandon(keys, entry, id)
			return backend.RWGrant{}, errClosed
		}
	}
}

// rwAbandon leaves the queue, and releases a grant made under id if any,
// on its own short deadline: the caller's context may be over.
func (b *Backend) rwAbandon(keys []string, entry, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	// A failure leaves at most a queue entry that stops beating and a
	// grant that expires: both free themselves.
	_ = rwAbandonScript.Run(ctx, b.client, keys, entry, id, b.channel).Err()
}

// Renew implements backend.RWLocks.
func (rw rwlocks) Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (backend.RWGrant, error) {
	ttlMS := int64(0) // keep the lease's TTL
	if ttl > 0 {
		ttlMS = store.Ms(ttl)
	}
	v, err := rwRenewScript.Run(ctx, rw.b.client, rw.b.rwKeys(key), leaseID, ttlMS).Result()
	if err != nil {
		return backend.RWGrant{}, unavailable(ctx, "rw renew", err)
	}
	if n, _ := v.(int64); n == -1 {
		return backend.RWGrant{}, fmt.Errorf("redis rw renew %q: %w", key, backend.ErrSessionBound)
	}
	res, ok := v.([]any)
	if !ok {
		return backend.RWGrant{}, fmt.Errorf("redis rw renew %q: %w", key, backend.ErrLeaseExpired)
	}
	return backend.RWGrant{Mode: modeName(store.Str(res[0])), Grant: backend.Grant{Key: key, LeaseID: leaseID, Token: uint64(store.Int(res[1])),
		Owner: store.Str(res[4]), TTL: time.Duration(store.Int(res[3])) * time.Millisecond, ExpiresAt: time.UnixMilli(store.Int(res[2]))}}, nil
}

// Release implements backend.RWLocks.
func (rw rwlocks) Release(ctx context.Context, key, leaseID string) error {
	n, err := rwReleaseScript.Run(ctx, rw.b.client, rw.b.rwKeys(key), leaseID, rw.b.channel).Int()
	if err != nil {
		return unavailable(ctx, "rw release", err)
	}
	if n != 1 {
		return fmt.Errorf("redis rw release %q: %w", key, backend.ErrLeaseExpired)
	}
	return nil
}

// Inspect implements backend.RWLocks.
func (rw rwlocks) Inspect(ctx context.Context, key string) (backend.RWState, error) {
	res, err := rwInspectScript.Run(ctx, rw.b.client, rw.b.rwKeys(key)).Slice()
	if err != nil {
		return backend.RWState{}, unavailable(ctx, "rw inspect", err)
	}
	st := backend.RWState{Key: key, WaitingReaders: int(store.Int(res[0])), WaitingWriters: int(store.Int(res[1]))}
	if du := store.Int(res[2]); du > 0 {
		st.DelayedUntil = time.UnixMilli(du)
	}
	for i := 3; i+3 < len(res); i += 4 {
		st.Holders = append(st.Holders, backend.RWHolder{Mode: modeName(store.Str(res[i])),
			Holder: backend.Holder{Owner: store.Str(res[i+1]), Token: uint64(store.Int(res[i+2])), ExpiresAt: time.UnixMilli(store.Int(res[i+3]))}})
	}
	sort.Slice(st.Holders, func(i, j int) bool { return st.Holders[i].Token < st.Holders[j].Token })
	if len(st.Holders) > 0 {
		st.Mode = st.Holders[0].Mode
	}
	return st, nil
}
