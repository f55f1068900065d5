package redis

// Key events: the lock's event log (events.go) read as backend.KeyEvents.
// A cursor names the log entry an event came from, and the key:
// "<n>.<entry id>.<key hash>". A resume replays the log from it when the
// entry is still there with the same n (the log was neither trimmed past it
// nor lost), and resyncs otherwise.

import (
	"context"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"time"

	"github.com/lockd/lockd/backend"
)

var _ backend.Watcher = (*Backend)(nil)

// WatchFeatures implements backend.Watcher.
func (b *Backend) WatchFeatures() backend.WatchFeatures {
	return backend.WatchFeatures{Replay: true, Changes: "watch"}
}

func keyHash(key string) string {
	h := fnv.New64a()
	h.Write([]byte(key))
	return strconv.FormatUint(h.Sum64(), 36)
}

func cursor(key, id string, n int64) string {
	return strconv.FormatInt(n, 10) + "." + id + "." + keyHash(key)
}

// parseCursor reads a cursor of key's; ok is false for anything else.
func parseCursor(key, c string) (id string, n int64, ok bool) {
	parts := strings.Split(c, ".")
	if len(parts) != 3 || parts[2] != keyHash(key) {
		return "", 0, false
	}
	n, err := strconv.ParseInt(parts[0], 10, 64)
	ms, seq, found := strings.Cut(parts[1], "-")
	if err != nil || n < 0 || !found || !digits(ms) || !digits(seq) {
		return "", 0, false
	}
	return parts[1], n, true
}

func digits(s string) bool {
	if s == "" || len(s) > 20 {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// resumable reports whether key's log still holds the entry id with this n,
// so that reading on from it misses nothing.
func (b *Backend) resumable(ctx context.Context, key, id string, n int64) (bool, error) {
	stream := b.keys(key)[4]
	if n == 0 { // the log was empty: it must start at its first entry
		es, err := b.client.XRangeN(ctx, stream, "-", "+", 1).Result()
		if err != nil {
			return false, unavailable(ctx, "xrange", err)
		}
		return len(es) == 0 || parseEntry(es[0]).N == 1, nil
	}
	es, err := b.client.XRange(ctx, stream, id, id).Result()
	if err != nil {
		return false, unavailable(ctx, "xrange", err)
	}
	return len(es) == 1 && parseEntry(es[0]).N == n, nil
}

// Watch implements backend.Watcher.
func (b *Backend) Watch(ctx context.Context, key, after string) (<-chan backend.KeyEvent, error) {
	f, s, err := b.follow(ctx, lockNS, key)
	if err != nil {
		return nil, err
	}
	var first *backend.KeyEvent
	snap := backend.KeyEvent{Kind: backend.KeySnapshot, Held: s.Token != 0, Token: s.Token, Cursor: cursor(key, s.Last.ID, s.Last.N)}
	if snap.Held {
		snap.Owner, snap.ExpiresAt = s.Owner, s.ExpiresAt
	}
	if after == "" {
		first = &snap
	} else if id, n, ok := parseCursor(key, after); !ok || n > s.Last.N {
		snap.Resync = true
		first = &snap
	} else if ok, err := b.resumable(ctx, key, id, n); err != nil {
		return nil, err
	} else if !ok {
		snap.Resync = true
		first = &snap
	} else {
		f.cursor, f.n = id, n // read on from the cursor: the log replays what was missed
	}
	out := make(chan backend.KeyEvent, 16)
	send := func(ctx context.Context, ev backend.KeyEvent) error {
		select {
		case out <- ev:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	run := func(ctx context.Context) error {
		if first != nil {
			if err := send(ctx, *first); err != nil {
				return err
			}
		}
		for {
			entries, err := f.next(ctx)
			if err != nil {
				return err
			}
			for _, e := range entries {
				ev := backend.KeyEvent{Token: e.Token, Cursor: cursor(key, e.ID, e.N)}
				switch e.Kind {
				case entryAcquired:
					ev.Kind, ev.Owner, ev.ExpiresAt = backend.KeyAcquired, e.Owner, e.ExpiresAt
				case entryReleased:
					ev.Kind = backend.KeyReleased
				case entryExpired:
					ev.Kind = backend.KeyExpired
				default:
					return fmt.Errorf("redis: %w: lock %q: unknown log entry %q", backend.ErrUnavailable, key, e.Kind)
				}
				if err := send(ctx, ev); err != nil {
					return err
				}
			}
		}
	}
	end := func(err error) {
		select {
		case out <- backend.KeyEvent{Err: err}:
		case <-time.After(time.Second): // nobody reads any more
		}
		close(out)
	}
	if err := b.stream(ctx, run, end); err != nil {
		return nil, err
	}
	return out, nil
}
