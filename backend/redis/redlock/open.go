package redlock

// Opening the backend from lockd's configuration, and what lockd's Redis
// user must be allowed on every master.

import (
	"context"
	"errors"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/backend/redis/internal/store"
)

// Config is what lockd's --redis-* flags say, Addrs being the independent
// masters; Prefix defaults to "lockd:rl:".
type Config = store.Config

// Needs lists, as commands with sample arguments under prefix, what lockd's
// Redis user must be allowed on every master beyond PING and EVAL: the
// commands this backend sends and its scripts call.
// TestNeedsCoverTheScripts keeps this in step with scripts/ and redlock.go.
func Needs(prefix string) [][]string {
	base := store.Base(prefix, "lockd-startup-check")
	lock, fence := base+"lock", base+"fence"
	return [][]string{
		{"EVALSHA", "0000000000000000000000000000000000000000", "0"},
		{"SCAN", "0"},
		{"HMGET", lock, "id"},
		{"HGET", lock, "id"},
		{"HSET", lock, "id", "x"},
		{"DEL", lock},
		{"PEXPIRE", lock, "1"},
		{"PTTL", lock},
		{"INCR", fence},
		{"GET", fence},
		{"SET", fence, "1"},
		// semaphores (semaphore.go): each master's live permits by slot
		{"TIME"},
		{"ZADD", base + "live", "1", "0"},
		{"ZREM", base + "live", "0"},
		{"ZCOUNT", base + "live", "0", "1"},
		{"ZRANGEBYSCORE", base + "live", "0", "1"},
	}
}

// ACL is the least-privilege ACL rule list for lockd's user on every
// master: the prefix's keys and only the commands in Needs.
func ACL(prefix string) string { return store.ACL(prefix, Needs(prefix), false) }

// Open checks every master: one that refuses lockd's credentials, TLS or
// ACL is a mistake to fix before starting; one that is down is what
// Redlock tolerates, as long as a majority is up.
func Open(ctx context.Context, c Config) (backend.Opened, error) {
	addrs := c.Addrs
	if len(addrs) == 0 {
		return backend.Opened{}, errors.New("--backend redlock needs --redis-addrs a,b,c,... (independent masters, an odd number)")
	}
	cr, err := c.Creds()
	if err != nil {
		return backend.Opened{}, err
	}
	prefix := c.Prefix
	if prefix == "" {
		prefix = "lockd:rl:"
	}
	log := c.Log()
	goredis.SetLogger(store.Logger{Log: log})
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	errs, refused := store.CheckAll(ctx, addrs, Needs(prefix), ACL(prefix), cr)
	if refused != nil {
		return backend.Opened{}, refused
	}
	down := 0
	for _, e := range errs {
		if e != nil {
			down++
		}
	}
	if quorum := len(addrs)/2 + 1; len(addrs)-down < quorum {
		return backend.Opened{}, fmt.Errorf("redlock: %d of %d masters answered, %d needed: %w", len(addrs)-down, len(addrs), quorum, errors.Join(errs...))
	}
	var masters []goredis.UniversalClient
	for i, a := range addrs {
		m := goredis.NewClient(&goredis.Options{Addr: a, Username: cr.User, Password: cr.Password, TLSConfig: cr.TLS, MaxRetries: -1, DialerRetries: 1, ContextTimeoutEnabled: true})
		if errs[i] == nil {
			// One connection made now, so that the first acquire's short
			// per-master timeout is not spent on a TLS handshake.
			_ = m.Ping(ctx).Err()
		}
		masters = append(masters, m)
	}
	b, err := New(masters, Options{Prefix: prefix})
	if err != nil {
		for _, m := range masters {
			m.Close()
		}
		return backend.Opened{}, err
	}
	log.Warn("Redlock's fencing tokens are not safe under failures: a master that restarts empty or whose clock jumps lets a second majority grant the lock with a smaller token; use etcd or ZooKeeper where fencing must hold (README: Redis and Redlock)")
	for i, m := range masters {
		if errs[i] == nil {
			store.WarnIfNotPersistent(ctx, m, "redlock master "+addrs[i], log)
		}
	}
	describe := fmt.Sprintf("redlock over %d masters%s", len(addrs), cr.Describe())
	if down > 0 {
		describe += fmt.Sprintf("; %d did not answer at start", down)
	}
	return backend.Opened{Backend: b, Describe: describe, Close: func() { b.Close() }}, nil
}
