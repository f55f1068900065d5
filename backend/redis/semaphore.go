package redis

// Counting semaphores: every operation is one Lua script (scripts/sem_*.lua)
// on the store's own clock, under <Prefix>s:{<key>}:
//
//	slots  hash: "n" the live size, "<k>" slot k's permit
//	       "token|exp|ttl|secret|owner" ("" when free)
//	fence  counter, INCR'd by every grant: tokens increase over all permits
//	q, qt  the waiters' line and heartbeats, exactly as for a lock
//
// A permit's lease id is "<secret>.<slot>": renew and release go straight
// to its field. Every script reads a permit past its deadline (Redis's
// clock) as free, so an expired permit is never counted, with no lockd
// alive. The scripts call only the commands lock scripts already call, so
// lockd's least-privilege ACL needs nothing new. A grant takes the lowest
// free slot, only for the head of the line (or a newcomer when nobody
// waits); a release, or a grant that leaves slots free, wakes the next in
// line by pub/sub, and a waiter also wakes at the earliest holder's
// deadline, as for locks.
//
// A permit in a session (one Redis only, as for locks: sessions.go) has
// exp 0 in its record and a field "<k>:s" naming the session hash, whose
// deadline and TTL every script reads as the permit's; the session's grant
// set names it by the semaphore's base and its lease id, so that the
// session's close releases it (waking the head of the line) and its renew
// moves the slots hash's garbage expiry on.

import (
	"context"
	_ "embed"
	"fmt"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/backend/redis/internal/store"
	"github.com/lockd/lockd/internal/lease"
)

var (
	//go:embed scripts/sem_prelude.lua
	semPrelude string
	//go:embed scripts/sem_acquire.lua
	semAcquireLua string
	//go:embed scripts/sem_renew.lua
	semRenewLua string
	//go:embed scripts/sem_release.lua
	semReleaseLua string
	//go:embed scripts/sem_inspect.lua
	semInspectLua string

	semAcquireScript = goredis.NewScript(prelude + semPrelude + semAcquireLua)
	semRenewScript   = goredis.NewScript(prelude + semPrelude + semRenewLua)
	semReleaseScript = goredis.NewScript(prelude + semPrelude + semReleaseLua)
	semInspectScript = goredis.NewScript(prelude + semPrelude + semInspectLua)
)

var _ backend.Semaphorer = (*Backend)(nil)

// Semaphores implements backend.Semaphorer.
func (b *Backend) Semaphores() backend.Semaphores { return semaphores{b} }

type semaphores struct{ b *Backend }

func (s semaphores) Features() backend.SemaphoreFeatures {
	return backend.SemaphoreFeatures{FIFO: true, Sessions: !s.b.cluster()}
}

// semKeys is the semaphore scripts' KEYS (see sem_prelude.lua).
func (b *Backend) semKeys(key string) []string {
	base := store.Base(b.prefix+"s:", key)
	return []string{base + "slots", base + "fence", base + "q", base + "qt"}
}

func semHolders(flat []any) []backend.SemaphoreHolder {
	out := []backend.SemaphoreHolder{}
	for i := 0; i+3 < len(flat); i += 4 {
		out = append(out, backend.SemaphoreHolder{Slot: int(store.Int(flat[i])), Token: uint64(store.Int(flat[i+1])),
			ExpiresAt: time.UnixMilli(store.Int(flat[i+2])), Owner: store.Str(flat[i+3])})
	}
	sortHolders(out)
	return out
}

// semDelays reads a script's delays (count, then slot, until, token each)
// at the start of flat, and returns them by slot and what follows.
func semDelays(flat []any) ([]backend.SlotDelay, []any) {
	n := int(store.Int(flat[0]))
	var out []backend.SlotDelay
	for i := range n {
		j := 1 + 3*i
		out = append(out, backend.SlotDelay{Slot: int(store.Int(flat[j])), Delay: backend.Delay{Until: time.UnixMilli(store.Int(flat[j+1])), ExpiredToken: uint64(store.Int(flat[j+2]))}})
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].Slot < out[j-1].Slot; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out, flat[1+3*n:]
}

func sortHolders(hs []backend.SemaphoreHolder) {
	for i := 1; i < len(hs); i++ {
		for j := i; j > 0 && hs[j].Slot < hs[j-1].Slot; j-- {
			hs[j], hs[j-1] = hs[j-1], hs[j]
		}
	}
}

// Acquire implements backend.Semaphores.
func (s semaphores) Acquire(ctx context.Context, req backend.SemaphoreRequest) (backend.Permit, error) {
	b := s.b
	if err := ctx.Err(); err != nil {
		return backend.Permit{}, err
	}
	keys := b.semKeys(req.Key)
	var sessWake string
	if req.Session != "" {
		sk, err := b.sessionKey(req.Session)
		if err != nil {
			return backend.Permit{}, err
		}
		keys = append(keys, sk) // KEYS[5]
		sessWake = sessionWake(req.Session)
	}
	waiter, wake, done, err := b.mailbox(req.Wait > 0, sessWake)
	if err != nil {
		return backend.Permit{}, err
	}
	defer done()
	id := lease.NewID()
	giveUpAt := time.Now().Add(req.Wait)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	leave := func() {
		c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		// A failure leaves at most a waiter that stops beating and a
		// permit that expires: both free themselves.
		_ = semReleaseScript.Run(c, b.client, keys, "", id, b.channel, waiter).Err()
	}
	var leaveBeat func()
	for {
		res, err := semAcquireScript.Run(ctx, b.client, keys, id, req.Owner, store.Ms(req.TTL), waiter, store.Ms(b.beat), req.Permits, b.channel, req.LockDelay.Milliseconds()).Slice()
		if err != nil {
			leave() // the script may have run (a lost reply)
			return backend.Permit{}, unavailable(ctx, "semaphore acquire", err)
		}
		switch store.Int(res[0]) {
		case 1:
			p := backend.Permit{Grant: backend.Grant{Key: req.Key, LeaseID: id + "." + strconv.FormatInt(store.Int(res[1]), 10), Token: uint64(store.Int(res[2])), Owner: req.Owner,
				TTL: time.Duration(store.Int(res[5])) * time.Millisecond, ExpiresAt: time.UnixMilli(store.Int(res[3])), Session: store.Int(res[6]) == 1},
				Slot: int(store.Int(res[1])), Permits: req.Permits}
			if err := ctx.Err(); err != nil { // granted as the caller gave up
				leave()
				return backend.Permit{}, err
			}
			return p, nil
		case -4:
			return backend.Permit{}, &backend.PermitsMismatchError{Key: req.Key, Permits: int(store.Int(res[1]))}
		case -5:
			return backend.Permit{}, fmt.Errorf("redis acquire permit of %q: %w", req.Key, backend.ErrSessionExpired)
		}
		if waiter != "" && leaveBeat == nil {
			// Queued: our replica's heartbeat for this key keeps the place.
			leaveBeat = b.joinBeat(semBeatScript, keys[:4], waiter, wake)
			defer leaveBeat()
		}
		now := store.Int(res[1])
		delays, rest := semDelays(res[4:])
		holders := semHolders(rest)
		next := time.Duration(1<<63 - 1) // only the timers below, and wake-ups
		var delay *backend.Delay
		for _, d := range delays {
			if delay == nil || d.Until.Before(delay.Until) {
				delay = &backend.Delay{Until: d.Until, ExpiredToken: d.ExpiredToken}
			}
		}
		if delay != nil {
			// A slot in an expired permit's lock-delay frees at its end.
			if d := time.Duration(delay.Until.UnixMilli()-now+1) * time.Millisecond; d < next {
				next = d
			}
		}
		if sexp := store.Int(res[3]); sexp > 0 {
			// Leave when our session runs out: the script will say so.
			if d := time.Duration(sexp-now+1) * time.Millisecond; d < next {
				next = d
			}
		}
		if len(holders) >= req.Permits {
			// Wake when the first permit runs out, in Redis's time.
			first := holders[0].ExpiresAt.UnixMilli()
			for _, h := range holders {
				first = min(first, h.ExpiresAt.UnixMilli())
			}
			if d := time.Duration(first-now+1) * time.Millisecond; d < next {
				next = d
			}
		}
		left := time.Until(giveUpAt)
		if left <= 0 {
			if waiter != "" {
				leave()
			}
			return backend.Permit{}, &backend.SemaphoreHeldError{Key: req.Key, Permits: int(store.Int(res[2])), Holders: holders, Delay: delay}
		}
		timer.Reset(min(next, left))
		select {
		case <-wake:
			timer.Stop()
		case <-timer.C:
		case <-ctx.Done():
			leave()
			return backend.Permit{}, ctx.Err()
		case <-b.life.Done():
			leave()
			return backend.Permit{}, errClosed
		}
	}
}

// Renew implements backend.Semaphores.
func (s semaphores) Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (backend.Permit, error) {
	ttlMS := int64(0)
	if ttl > 0 {
		ttlMS = store.Ms(ttl)
	}
	secret, slot, ok := semLease(leaseID)
	if !ok {
		return backend.Permit{}, fmt.Errorf("redis renew permit of %q: %w", key, backend.ErrLeaseExpired)
	}
	v, err := semRenewScript.Run(ctx, s.b.client, s.b.semKeys(key), slot, secret, ttlMS).Result()
	if err != nil {
		return backend.Permit{}, unavailable(ctx, "semaphore renew", err)
	}
	if n, _ := v.(int64); n == -1 {
		return backend.Permit{}, fmt.Errorf("redis renew permit of %q: %w", key, backend.ErrSessionBound)
	}
	res, ok := v.([]any)
	if !ok {
		return backend.Permit{}, fmt.Errorf("redis renew permit of %q: %w", key, backend.ErrLeaseExpired)
	}
	return backend.Permit{Grant: backend.Grant{Key: key, LeaseID: leaseID, Token: uint64(store.Int(res[1])), Owner: store.Str(res[4]),
		TTL: time.Duration(store.Int(res[3])) * time.Millisecond, ExpiresAt: time.UnixMilli(store.Int(res[2]))},
		Slot: int(store.Int(res[0])), Permits: int(store.Int(res[5]))}, nil
}

// Release implements backend.Semaphores.
func (s semaphores) Release(ctx context.Context, key, leaseID string) error {
	secret, slot, ok := semLease(leaseID)
	if !ok {
		return fmt.Errorf("redis release permit of %q: %w", key, backend.ErrLeaseExpired)
	}
	n, err := semReleaseScript.Run(ctx, s.b.client, s.b.semKeys(key), slot, secret, s.b.channel, "").Int()
	if err != nil {
		return unavailable(ctx, "semaphore release", err)
	}
	if n != 1 {
		return fmt.Errorf("redis release permit of %q: %w", key, backend.ErrLeaseExpired)
	}
	return nil
}

// Inspect implements backend.Semaphores.
func (s semaphores) Inspect(ctx context.Context, key string) (backend.SemaphoreState, error) {
	res, err := semInspectScript.Run(ctx, s.b.client, s.b.semKeys(key)).Slice()
	if err != nil {
		return backend.SemaphoreState{}, unavailable(ctx, "semaphore inspect", err)
	}
	delays, rest := semDelays(res[2:])
	return backend.SemaphoreState{Key: key, Permits: int(store.Int(res[0])), Waiters: int(store.Int(res[1])), Holders: semHolders(rest), Delayed: delays}, nil
}

// semLease splits a permit's lease id into its secret and slot.
func semLease(leaseID string) (secret, slot string, ok bool) {
	i := strings.LastIndexByte(leaseID, '.')
	if i <= 0 || !lease.ValidID(leaseID) {
		return "", "", false
	}
	n, err := strconv.Atoi(leaseID[i+1:])
	if err != nil || n < 0 || n >= backend.MaxPermits || strconv.Itoa(n) != leaseID[i+1:] {
		return "", "", false
	}
	return leaseID[:i], leaseID[i+1:], true
}
