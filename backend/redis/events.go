package redis

// The event log of a lock or an election (see prelude.lua): a capped stream
// per key, appended to by every script that changes the holder, in the same
// atomic step as the change. A follower reads it with XREAD BLOCK from the
// last entry it saw. Redis expires a lease's key unseen, so at the holder's
// deadline the follower runs look.lua, which removes the overdue grant and
// logs its expiry (once, whoever looks first); the entry then arrives like
// any other. Renewals are not logged: the follower re-reads the state after
// each batch of entries, at each deadline and after each empty read (at
// most maxBlock apart), and sets its timer from it.
//
// Every entry carries n, one more than the entry before it while the stream
// lives. A follower that sees a jump, or a log shorter than what it read,
// lost entries (trimmed past it, or the stream expired, or Redis restarted
// without its data): it ends with ErrUnavailable rather than go on with a
// gap, and its caller reads the state afresh.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/backend/redis/internal/store"
)

// Kinds of log entries.
const (
	entryAcquired   = "a"
	entryProclaimed = "p"
	entryReleased   = "r"
	entryExpired    = "x"
)

// logEntry is one entry of a key's event log.
type logEntry struct {
	ID        string
	N         int64
	Kind      string
	Token     uint64
	Owner     string
	Value     string
	ExpiresAt time.Time // the holder's deadline when it was written (acquired, proclaimed)
}

// snapshot is what look.lua reads in one step.
type snapshot struct {
	Token     uint64 // 0: free
	Owner     string
	Value     string
	ExpiresAt time.Time
	Waiters   int
	Last      logEntry // the log's last entry (ID, N, Kind, Token); ID "0-0" when the log is empty
	// DelayedUntil is the end of an expired grant's lock-delay in force
	// (zero: none); the key then reads as free (Token 0).
	DelayedUntil time.Time
	until        time.Duration // from the read to the holder's deadline, on Redis's clock
}

func (b *Backend) look(ctx context.Context, keys []string) (snapshot, error) {
	res, err := lookScript.Run(ctx, b.client, keys).Slice()
	if err != nil {
		return snapshot{}, unavailable(ctx, "look", err)
	}
	s := snapshot{
		Token: uint64(store.Int(res[0])), Owner: store.Str(res[1]), Value: store.Str(res[2]), ExpiresAt: time.UnixMilli(store.Int(res[3])),
		Waiters: int(store.Int(res[5])),
		Last:    logEntry{ID: store.Str(res[6]), N: store.Int(res[7]), Kind: store.Str(res[8]), Token: uint64(store.Int(res[9]))},
		until:   time.Duration(store.Int(res[3])-store.Int(res[4])) * time.Millisecond,
	}
	if u := store.Int(res[10]); u > 0 {
		s.DelayedUntil = time.UnixMilli(u)
	}
	return s, nil
}

// maxBlock bounds one XREAD BLOCK. go-redis does not cut a blocked read
// when its context is cancelled, so a follower whose reader left lingers at
// most this long, holding one of the client's pooled connections.
const maxBlock = time.Second

var errLost = fmt.Errorf("redis: %w: the event log lost entries this stream had not read (trimmed, expired, or Redis restarted without its data)", backend.ErrUnavailable)

// follower reads one key's log in order.
type follower struct {
	b        *Backend
	keys     []string
	cursor   string    // the last entry read
	n        int64     // its n
	deadline time.Time // when to look again (the holder's deadline); zero: no holder
}

// follow reads the key's state and starts a follower right after it.
func (b *Backend) follow(ctx context.Context, ns, key string) (*follower, snapshot, error) {
	keys := b.keysIn(ns, key)
	s, err := b.look(ctx, keys)
	if err != nil {
		return nil, snapshot{}, err
	}
	f := &follower{b: b, keys: keys, cursor: s.Last.ID, n: s.Last.N}
	f.arm(s)
	return f, s, nil
}

func (f *follower) arm(s snapshot) {
	f.deadline = time.Time{}
	if s.Token != 0 {
		// A millisecond late: at the deadline itself the key still holds.
		f.deadline = time.Now().Add(s.until + time.Millisecond)
	}
}

// relook re-reads the state (logging an overdue holder's expiry) and sets
// the timer from it.
func (f *follower) relook(ctx context.Context) error {
	s, err := f.b.look(ctx, f.keys)
	if err != nil {
		return err
	}
	if s.Last.N < f.n {
		return errLost
	}
	f.arm(s)
	return nil
}

// next waits for the entries after the last one read and returns them in
// log order.
func (f *follower) next(ctx context.Context) ([]logEntry, error) {
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		block := maxBlock
		if !f.deadline.IsZero() {
			d := time.Until(f.deadline)
			if d <= 0 {
				if err := f.relook(ctx); err != nil {
					return nil, err
				}
				continue
			}
			block = min(block, d)
		}
		block = max(block, time.Millisecond) // BLOCK 0 would wait forever
		res, err := f.b.client.XRead(ctx, &goredis.XReadArgs{Streams: []string{f.keys[4], f.cursor}, Count: 100, Block: block}).Result()
		if errors.Is(err, goredis.Nil) {
			// Nothing within block. Check that the log is still the one
			// being read: a client that retried the read on a new
			// connection to a Redis that restarted empty would otherwise
			// wait on a fresh log until the holder's deadline.
			if err := f.relook(ctx); err != nil {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, unavailable(ctx, "xread", err)
		}
		var out []logEntry
		for _, st := range res {
			for _, m := range st.Messages {
				e := parseEntry(m)
				if e.N != f.n+1 {
					return nil, errLost
				}
				f.cursor, f.n = e.ID, e.N
				out = append(out, e)
			}
		}
		if err := f.relook(ctx); err != nil {
			return nil, err
		}
		if len(out) > 0 {
			return out, nil
		}
	}
}

func parseEntry(m goredis.XMessage) logEntry {
	str := func(k string) string { s, _ := m.Values[k].(string); return s }
	num := func(k string) int64 { n, _ := strconv.ParseInt(str(k), 10, 64); return n }
	e := logEntry{ID: m.ID, N: num("n"), Kind: str("e"), Token: uint64(num("t")), Owner: str("o"), Value: str("v")}
	if x := num("x"); x > 0 {
		e.ExpiresAt = time.UnixMilli(x)
	}
	return e
}

// stream runs a follower's goroutine: it counts as an operation in flight
// for Close, and its context ends when the Backend closes. run's error, if
// any, is reported by end.
func (b *Backend) stream(ctx context.Context, run func(ctx context.Context) error, end func(error)) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return errClosed
	}
	b.active.Add(1)
	b.mu.Unlock()
	go func() {
		defer b.active.Done()
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		defer context.AfterFunc(b.life, cancel)()
		err := run(ctx)
		if b.life.Err() != nil && ctx.Err() != nil {
			err = errClosed
		}
		end(err)
	}()
	return nil
}
