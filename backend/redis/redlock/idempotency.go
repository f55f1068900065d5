package redlock

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/backend/redis/internal/store"
	"github.com/lockd/lockd/internal/lease"
)

// Idempotent acquires.
//
// Each master keeps its own record of an acquire with an idempotency key,
// the hash <Prefix>{<key>}:i:<idempotency key> = {f: fingerprint, l: lease
// id, t, e, v: the grant's token, expiry and validity in ms}. The acquire
// script writes {f, l} in the same run that grants the master's copy; once a
// majority granted, the attempt commits: it writes {t, e, v} on the masters
// that hold the lease (commit.lua, which also raises their counters to the
// token) and returns the grant only when a majority committed the same
// values. The attempt that gives up deletes its uncommitted records with its
// copies, so a refusal leaves no record (except on a master it could not
// reach, where the record names a lease that holds nothing and is re-run).
//
// A retry's script run finds the record on each master that has it:
//   - committed, and the lease still holds a majority: the retry returns the
//     recorded grant, the same lease, token, expiry and validity; masters
//     that lost theirs (restarted empty) are given the lease again, under
//     the recorded token;
//   - committed, and released on a master that still has the record (its
//     copy went before the deadline it was committed with), or no longer
//     held by a majority: ErrLeaseExpired. A copy that expired after that
//     deadline on a master a renew missed does not end the lease; after a
//     renew the replay reports the lease as renewed. A committed lease is
//     never granted again where its copy went;
//   - uncommitted (the first attempt died or gave up half-way): the retry
//     runs Redlock again under the same lease id, so the copies left behind
//     count for it instead of blocking the key for a TTL.

var _ backend.Idempotent = (*Backend)(nil)

// IdempotentAcquire implements backend.Idempotent.
func (b *Backend) IdempotentAcquire() {}

// idemState is what one idempotent Acquire carries from try to try.
type idemState struct {
	id      string // the lease id tried with
	adopted bool   // id is an earlier attempt's, found in a record
	// committed: id was seen committed; its copies are a grant somebody
	// was given, never this Acquire's to give back.
	committed bool
	switches  int // times id was replaced by a recorded one
}

// maxSwitches bounds how often one Acquire adopts a recorded lease id (two
// attempts racing under one key could otherwise hand it back and forth).
const maxSwitches = 3

// committed is an idempotent grant's values as its record holds them; the
// zero value is "not committed".
type committed struct {
	token         uint64
	exp, validity int64 // Unix ms, ms
}

func (c committed) ok() bool { return c.exp > 0 }

func committedOf(v []any) committed {
	return committed{token: uint64(store.Int(v[0])), exp: store.Int(v[1]), validity: store.Int(v[2])}
}

func (c committed) grant(req backend.AcquireRequest, id string, replayed bool) backend.Grant {
	return backend.Grant{Key: req.Key, LeaseID: id, Token: c.token, Owner: req.Owner,
		TTL: time.Duration(c.validity) * time.Millisecond, ExpiresAt: time.UnixMilli(c.exp), Replayed: replayed}
}

// idemKeys is the acquire and commit scripts' KEYS: the lock's keys, then
// the idempotency record.
func (b *Backend) idemKeys(req backend.AcquireRequest) []string {
	return append(b.keys(req.Key), b.prefix+"{"+req.Key+"}:i:"+req.Idempotency.Key)
}

// releaseIdem deletes id's copy on every master, and its record where it is
// uncommitted (or, with drop, committed too), on its own deadline.
func (b *Backend) releaseIdem(keys []string, id string, drop bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*b.opts.NodeTimeout)
	defer cancel()
	flag := "0"
	if drop {
		flag = "1"
	}
	b.each(ctx, func(c context.Context, m goredis.UniversalClient) (any, error) {
		return releaseScript.Run(c, m, []string{keys[0], keys[2]}, id, flag).Int()
	})
}

// commitOn runs commit.lua with c on the masters in which, and returns each
// one's committed values (zero where it failed or the lease is gone).
func (b *Backend) commitOn(ctx context.Context, keys []string, id string, c committed, which []int) []committed {
	on := make(map[goredis.UniversalClient]bool, len(which))
	for _, i := range which {
		on[b.masters[i]] = true
	}
	replies := b.each(ctx, func(cx context.Context, m goredis.UniversalClient) (any, error) {
		if !on[m] {
			return nil, nil
		}
		return commitScript.Run(cx, m, keys, id, c.token, c.exp, c.validity).Slice()
	})
	out := make([]committed, len(b.masters))
	for _, i := range which {
		if r := replies[i]; r.err == nil {
			if v, ok := r.v.([]any); ok {
				out[i] = committedOf(v)
			}
		}
	}
	return out
}

// found is another lease an earlier attempt recorded for this key.
type found struct {
	held    int               // masters where it holds the lock
	commits map[committed]int // committed values, by masters where it holds
	commit  committed         // any committed value seen
	renewed []renewal         // per master where it holds
}

// renewal is a held copy's deadline and TTL when a renew moved it since the
// commit (zero when none did).
type renewal struct{ exp, ttl int64 }

func renewalOf(v []any) renewal {
	if len(v) < 2 {
		return renewal{}
	}
	return renewal{exp: store.Int(v[0]), ttl: store.Int(v[1])}
}

// current is c as the lease stands now on the masters that hold it: a renew
// since the commit moved the lease's end to where a majority of copies run
// out, less the drift (a replay reports that); otherwise c, unchanged.
func (b *Backend) current(c committed, held []renewal) committed {
	if len(held) < b.quorum {
		return c
	}
	type end struct{ exp, validity int64 }
	ends := make([]end, 0, len(held))
	for _, r := range held {
		if r.exp == 0 {
			ends = append(ends, end{c.exp, c.validity})
			continue
		}
		ttl := time.Duration(r.ttl) * time.Millisecond
		v := (ttl - b.drift(ttl)).Truncate(time.Millisecond)
		ends = append(ends, end{r.exp - ttl.Milliseconds() + v.Milliseconds(), v.Milliseconds()})
	}
	sort.Slice(ends, func(i, j int) bool { return ends[i].exp > ends[j].exp })
	if e := ends[b.quorum-1]; e.exp > c.exp {
		c.exp, c.validity = e.exp, e.validity
	}
	return c
}

// tryIdem is try for an acquire with an idempotency key.
func (b *Backend) tryIdem(ctx context.Context, req backend.AcquireRequest, st *idemState) (backend.Grant, *failed, error) {
	keys := b.idemKeys(req)
	id := st.id
	start := time.Now()
	deadline := lease.Deadline(start, req.TTL)
	fp := "f:" + req.Idempotency.Fingerprint // never '' in the script
	keep := store.Ms(max(req.TTL, req.Wait) + backend.IdempotencyWindow)
	replies := b.each(ctx, func(c context.Context, m goredis.UniversalClient) (any, error) {
		return acquireScript.Run(c, m, keys, id, req.Owner, store.Ms(req.TTL), deadline.UnixMilli(), fp, keep).Slice()
	})
	var (
		granted   []int // masters where id holds the lock (new or earlier)
		uncommit  []int // of those, the ones whose record lacks the commit
		tokens    = make([]uint64, len(b.masters))
		maxToken  uint64
		holders   = map[string]*backend.Holder{}
		votes     = map[string]int{}
		errs      []error
		reused    bool
		endedHere int // masters where id's committed copy is gone
		released  int // of those, the ones where it went before its deadline
		others    = map[string]*found{}
		known     committed // id's committed values, when a record has them
		renewals  []renewal // of the masters in granted
	)
	for i, r := range replies {
		if r.err != nil {
			errs = append(errs, r.err)
			continue
		}
		res := r.v.([]any)
		switch store.Int(res[0]) {
		case 1:
			granted = append(granted, i)
			tokens[i] = uint64(store.Int(res[1]))
			maxToken = max(maxToken, tokens[i])
			renewals = append(renewals, renewalOf(res[5:]))
			if c := committedOf(res[2:5]); c.ok() {
				known = c
			} else {
				uncommit = append(uncommit, i)
			}
		case 0:
			hid := store.Str(res[1])
			votes[hid]++
			if h := holders[hid]; h == nil || uint64(store.Int(res[3])) > h.Token {
				holders[hid] = &backend.Holder{Owner: store.Str(res[2]), Token: uint64(store.Int(res[3])), ExpiresAt: time.UnixMilli(store.Int(res[4]))}
			}
		case -1:
			// Gone before the deadline it was committed with: released
			// (both times are the client's clock). Gone after it: expired
			// here, which a renew that missed this master explains.
			endedHere++
			if d := store.Int(res[1]); d == 0 || start.UnixMilli() < d {
				released++
			}
		case -2:
			reused = true
		case 2:
			l := store.Str(res[1])
			f := others[l]
			if f == nil {
				f = &found{commits: map[committed]int{}}
				others[l] = f
			}
			c := committedOf(res[3:6])
			if c.ok() {
				f.commit = c
			}
			if store.Int(res[2]) == 1 {
				f.held++
				if c.ok() {
					f.commits[c]++
					f.renewed = append(f.renewed, renewalOf(res[6:]))
				}
			}
		}
	}
	answered := len(b.masters) - len(errs)
	// rollback undoes this try's copies and uncommitted records; never a
	// committed grant's, which is not this try's to undo (even when its
	// masters did not answer this time).
	if known.ok() {
		st.committed = true
	}
	rollback := func() {
		if !st.committed && (len(granted) > 0 || len(errs) > 0) {
			b.releaseIdem(keys, id, false)
		}
	}
	ended := func() (backend.Grant, *failed, error) {
		b.releaseAll(keys, id) // copies only: the records keep saying "ended"
		return backend.Grant{}, nil, fmt.Errorf("redlock acquire %q: the grant of this idempotency key ended: %w", req.Key, backend.ErrLeaseExpired)
	}
	unavailable := func(format string, args ...any) *failed {
		return &failed{unavailable: fmt.Errorf("redlock acquire %q: %w: "+format, append([]any{req.Key, backend.ErrUnavailable}, args...)...)}
	}
	// Another attempt under the same key recorded another lease: adopt it
	// when it was committed, or holds more masters than this try won (the
	// lower lease id breaks a tie), so that two attempts racing under one
	// key end up under one lease rather than handing it back and forth.
	var (
		pick string
		best *found
	)
	for l, f := range others {
		if best == nil || f.commit.ok() && !best.commit.ok() || f.commit.ok() == best.commit.ok() && f.held > best.held {
			pick, best = l, f
		}
	}
	// A lease that holds no master (a dead attempt's copies expired) is
	// adopted too: re-running under it harms nobody, and ignoring it would
	// leave its records in the way for as long as they are kept.
	adopt := best != nil && (best.commit.ok() || best.held == 0 || best.held > len(granted) || best.held == len(granted) && pick < id)
	switch {
	case reused:
		rollback()
		return backend.Grant{}, nil, fmt.Errorf("redlock acquire %q: %w", req.Key, backend.ErrIdempotencyKeyReused)
	case adopt:
		rollback()
		for c, n := range best.commits {
			if n >= b.quorum {
				c = b.current(c, best.renewed)
			}
			if n >= b.quorum && time.Now().UnixMilli() >= c.exp {
				return backend.Grant{}, nil, fmt.Errorf("redlock acquire %q: the grant of this idempotency key ran out: %w", req.Key, backend.ErrLeaseExpired)
			}
			if n == answered && n >= b.quorum {
				// Held under its committed values by every master that
				// answered: the same grant again, changing nothing.
				return c.grant(req, pick, true), nil, ctx.Err()
			}
		}
		if st.switches >= maxSwitches {
			return backend.Grant{}, unavailable("attempts under one idempotency key keep racing"), nil
		}
		// Otherwise run again under that lease: its copies count, and the
		// masters that lack one (restarted empty, missed) get one under the
		// recorded token, so the grant does not rest on a bare majority.
		st.id, st.adopted, st.committed = pick, true, best.commit.ok()
		st.switches++
		return backend.Grant{}, &failed{switched: true}, nil
	case released > 0:
		return ended()
	case endedHere > 0 && !known.ok():
		return ended()
	case known.ok():
		// id is a committed grant, found again by a re-run under its id
		// (masters where its copy expired count as answered, not held).
		recorded := known // what the records hold; a renew moves only the copies
		if len(granted) >= b.quorum {
			known = b.current(known, renewals)
		}
		if time.Now().UnixMilli() >= known.exp {
			return ended()
		}
		if len(granted) < b.quorum {
			if answered < b.quorum {
				return backend.Grant{}, unavailable("%d of %d masters answered, %d needed: %w", answered, len(b.masters), b.quorum, errors.Join(errs...)), nil
			}
			// Gone from too many masters (restarted empty, taken since).
			return ended()
		}
		// Bring the masters that lacked it up to the recorded token.
		var behind []int
		for _, i := range granted {
			if tokens[i] != recorded.token {
				behind = append(behind, i)
			}
		}
		behind = append(behind, uncommit...)
		if len(behind) > 0 {
			b.commitOn(ctx, keys, id, recorded, behind)
		}
		return known.grant(req, id, true), nil, ctx.Err()
	}
	if len(granted) < b.quorum {
		f := &failed{}
		most := 0
		for hid, n := range votes {
			if n > most {
				most, f.holder = n, holders[hid]
			}
		}
		f.split = most < b.quorum
		if answered < b.quorum {
			f.unavailable = fmt.Errorf("redlock acquire %q: %w: %d of %d masters answered, %d needed: %w",
				req.Key, backend.ErrUnavailable, answered, len(b.masters), b.quorum, errors.Join(errs...))
		}
		rollback()
		if err := ctx.Err(); err != nil {
			return backend.Grant{}, nil, err
		}
		return backend.Grant{}, f, nil
	}
	validity := b.validity(start, req.TTL)
	if validity <= 0 {
		rollback()
		f := unavailable("majority won after %v, no validity left of a %v TTL", time.Since(start).Round(time.Millisecond), req.TTL)
		f.slow = true
		return backend.Grant{}, f, nil
	}
	// Commit: the grant is what a majority records, this try's values
	// unless a racing attempt under the same key committed first.
	mine := committed{token: maxToken, exp: lease.Deadline(start, validity).UnixMilli(), validity: validity.Milliseconds()}
	got := b.commitOn(ctx, keys, id, mine, granted)
	count := map[committed]int{}
	foreign := false
	for _, c := range got {
		if c.ok() {
			count[c]++
			foreign = foreign || c != mine
		}
	}
	var win committed
	for c, n := range count {
		if n >= b.quorum {
			win = c
		}
	}
	if !win.ok() {
		if !foreign && !st.committed {
			b.releaseIdem(keys, id, true)
		}
		return backend.Grant{}, unavailable("the grant was committed on %d masters, %d needed", count[mine], b.quorum), nil
	}
	if err := ctx.Err(); err != nil {
		if win == mine && !st.committed { // granted as the caller gave up: leave nothing
			b.releaseIdem(keys, id, true)
		}
		return backend.Grant{}, nil, err
	}
	return win.grant(req, id, st.adopted || win != mine), nil, nil
}
