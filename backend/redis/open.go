package redis

// Opening the backend from lockd's configuration, and what lockd's Redis
// user must be allowed: the commands this package and its scripts send.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/backend/redis/internal/store"
)

// Config is what lockd's --redis-* flags say; Prefix defaults to "lockd:".
type Config = store.Config

// Needs lists, as commands with sample arguments under prefix, what lockd's
// Redis user must be allowed beyond PING and EVAL (which the start-up check
// runs itself): the commands this backend sends and the ones its scripts
// call, on the keys and channel they touch. Redis 7 checks a script's
// commands and keys against the user's ACL as it runs them.
// TestNeedsCoverTheScripts keeps this in step with scripts/ and the Go code.
func Needs(prefix string) [][]string {
	base := store.Base(prefix, "lockd-startup-check")
	lock, fence, queue, beats := base+"lock", base+"fence", base+"q", base+"qt"
	wake := prefix + "wake"
	sess := prefix + "s:lockd-startup-check"
	return [][]string{
		{"EVALSHA", "0000000000000000000000000000000000000000", "0"},
		{"SUBSCRIBE", wake},
		{"SCAN", "0"},
		{"TIME"},
		{"HGET", lock, "id"},
		{"HMGET", lock, "id"},
		{"HSET", lock, "id", "x"},
		{"DEL", lock},
		{"PEXPIRE", lock, "1"},
		{"PTTL", lock},
		{"INCR", fence},
		{"LINDEX", queue, "0"},
		{"LPOP", queue},
		{"RPUSH", queue, "x"},
		{"LREM", queue, "0", "x"},
		{"LRANGE", queue, "0", "-1"},
		{"HGETALL", lock},
		{"HDEL", lock, "x"},
		{"ZADD", beats, "1", "x"},
		{"ZREM", beats, "x"},
		{"ZSCORE", beats, "x"},
		{"ZCOUNT", beats, "0", "1"},
		{"PUBLISH", wake, "x"},
		{"XADD", base + "ev", "*", "n", "1"},
		{"XREVRANGE", base + "ev", "+", "-"},
		{"XREAD", "STREAMS", base + "ev", "0-0"},
		{"XRANGE", base + "ev", "-", "+"},
		// sessions (sessions.go): a session's grant set
		{"SADD", sess + ":g", base},
		{"SREM", sess + ":g", base},
		{"SMEMBERS", sess + ":g"},
	}
}

// ACL is the least-privilege ACL rule list for lockd's user over prefix:
// its keys and its wake channel, and only the commands in Needs.
func ACL(prefix string) string { return store.ACL(prefix, Needs(prefix), true) }

// Open checks that every address takes lockd's credentials and lets its
// user do what the backend needs, then connects, and warns when the server
// keeps no append-only file.
func Open(ctx context.Context, c Config) (backend.Opened, error) {
	if len(c.Addrs) == 0 {
		return backend.Opened{}, errors.New("--backend redis needs --redis-addrs host:port")
	}
	cr, err := c.Creds()
	if err != nil {
		return backend.Opened{}, err
	}
	prefix := c.Prefix
	if prefix == "" {
		prefix = "lockd:"
	}
	goredis.SetLogger(store.Logger{Log: c.Log()})
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	errs, _ := store.CheckAll(cctx, c.Addrs, Needs(prefix), ACL(prefix), cr)
	if err := errors.Join(errs...); err != nil {
		return backend.Opened{}, err
	}
	addrs := strings.Join(c.Addrs, ",")
	cli := store.Client(c.Addrs, cr)
	b, err := New(ctx, cli, Options{Prefix: prefix})
	if err != nil {
		cli.Close()
		return backend.Opened{}, fmt.Errorf("redis %s: %w", addrs, err)
	}
	store.WarnIfNotPersistent(ctx, cli, "redis "+addrs, c.Log())
	return backend.Opened{Backend: b, Describe: "redis at " + addrs + cr.Describe(), Close: func() { b.Close() }}, nil
}
