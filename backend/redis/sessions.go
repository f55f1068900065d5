package redis

// Sessions: many grants kept alive by one renew, on one Redis (standalone
// or Sentinel).
//
//	<Prefix>s:<h>     hash {owner, ttl, exp, gc}, PX = the session's TTL
//	<Prefix>s:<h>:g   set of its grants: a lock's or election's base
//	                  (<Prefix>{<key>}:), or a semaphore's or rwlock's
//	                  base followed by the grant's lease id
//
// h is a hash of the session id (the id, a capability, is never stored).
// Every operation is one script (scripts/session_*.lua, and acquire.lua
// with the session hash as KEYS[7], sem_acquire.lua and rw_acquire.lua with
// it as KEYS[5]). A grant made in a session stores the
// session hash's key in its lock hash (field s) and has no deadline of its
// own: every script that reads a holder's deadline reads the session's
// (prelude.lua), so one write to the session renews every grant, and a
// session past its deadline frees every grant with no lockd alive — the
// next script to look at a key removes and logs the overdue grant, as for
// an expired lease. The grant key's own expiry is a garbage bound an hour
// past the session's deadline, moved on by the session's renew before the
// session can outlive it.
//
// A waiter in a session leaves at the session's deadline (a timer, re-checked
// by the acquire script) or when the session is closed (session_close.lua
// publishes the session's wake message on the wake channel).
//
// Redis Cluster has no sessions: the session's keys and a grant's are in
// different slots, and a script may touch one slot only. Sessions() is nil
// there, and Unsupported says why.

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/backend/redis/internal/store"
	"github.com/lockd/lockd/internal/lease"
)

var (
	_ backend.Sessioner   = (*Backend)(nil)
	_ backend.Unsupported = (*Backend)(nil)
)

var (
	//go:embed scripts/session_open.lua
	sessionOpenLua string
	//go:embed scripts/session_get.lua
	sessionGetLua string
	//go:embed scripts/session_renew.lua
	sessionRenewLua string
	//go:embed scripts/session_close.lua
	sessionCloseLua string

	sessionOpenScript = goredis.NewScript(prelude + sessionOpenLua)
	sessionGetScript  = goredis.NewScript(prelude + sessionGetLua)
	// Renew and close reach the grants of every kind: they hold the
	// semaphores' and rwlocks' functions too.
	sessionRenewScript = goredis.NewScript(prelude + semPrelude + rwPrelude + sessionRenewLua)
	sessionCloseScript = goredis.NewScript(prelude + semPrelude + rwPrelude + sessionCloseLua)
)

// NoClusterSessions is why a Backend over Redis Cluster has no sessions.
const NoClusterSessions = "Redis Cluster: a session's record and its grants' keys are in different hash slots, and one script cannot touch them all; sessions need one Redis (standalone or Sentinel)"

func (b *Backend) cluster() bool {
	_, ok := b.client.(*goredis.ClusterClient)
	return ok
}

// Sessions implements backend.Sessioner; nil over Redis Cluster (lockd's
// HTTP API then answers not_supported).
func (b *Backend) Sessions() backend.Sessions {
	if b.cluster() {
		return nil
	}
	return sessions{b}
}

// Unsupported implements backend.Unsupported.
func (b *Backend) Unsupported() map[string]string {
	u := noLockDelays()
	if b.cluster() {
		u[backend.FeatureSessions] = NoClusterSessions
	}
	if len(u) == 0 {
		return nil
	}
	return u
}

type sessions struct{ b *Backend }

func (sessions) Features() backend.SessionFeatures { return backend.SessionFeatures{Expiry: "store"} }

// sessionHash names a session in Redis.
func sessionHash(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:16])
}

// sessionKeys is the session scripts' KEYS: the session hash and its grant
// set.
func (b *Backend) sessionKeys(id string) []string {
	k := b.prefix + "s:" + sessionHash(id)
	return []string{k, k + ":g"}
}

// sessionWake is the wake message that sends the session's waiters to look
// again (waiter ids never contain a colon).
func sessionWake(id string) string { return "s:" + sessionHash(id) }

// session reads a script's {owner, ttl ms, expires ms} answer; a non-table
// answer is ErrSessionExpired.
func session(id string, v any) (backend.Session, error) {
	res, ok := v.([]any)
	if !ok || len(res) < 3 {
		return backend.Session{}, backend.ErrSessionExpired
	}
	return backend.Session{ID: id, Owner: store.Str(res[0]), TTL: time.Duration(store.Int(res[1])) * time.Millisecond, ExpiresAt: time.UnixMilli(store.Int(res[2]))}, nil
}

// Open implements backend.Sessions.
func (s sessions) Open(ctx context.Context, owner string, ttl time.Duration) (backend.Session, error) {
	id := lease.NewID()
	v, err := sessionOpenScript.Run(ctx, s.b.client, s.b.sessionKeys(id), owner, store.Ms(ttl)).Result()
	if err != nil {
		return backend.Session{}, unavailable(ctx, "open session", err)
	}
	return session(id, v)
}

// Get implements backend.Sessions.
func (s sessions) Get(ctx context.Context, id string) (backend.Session, error) {
	return s.run(ctx, sessionGetScript, "get session", id)
}

// Renew implements backend.Sessions: one script, one write to the session
// whatever the number of its grants.
func (s sessions) Renew(ctx context.Context, id string, ttl time.Duration) (backend.Session, error) {
	ttlMS := int64(0) // keep the session's TTL
	if ttl > 0 {
		ttlMS = store.Ms(ttl)
	}
	return s.run(ctx, sessionRenewScript, "renew session", id, ttlMS, s.b.prefix)
}

func (s sessions) run(ctx context.Context, script *goredis.Script, op, id string, args ...any) (backend.Session, error) {
	if !lease.ValidID(id) {
		return backend.Session{}, backend.ErrSessionExpired
	}
	v, err := script.Run(ctx, s.b.client, s.b.sessionKeys(id), args...).Result()
	if err != nil {
		return backend.Session{}, unavailable(ctx, op, err)
	}
	return session(id, v)
}

// Close implements backend.Sessions: one script ends the session, releases
// its grants and wakes their next waiters and the session's own.
func (s sessions) Close(ctx context.Context, id string) error {
	if !lease.ValidID(id) {
		return backend.ErrSessionExpired
	}
	n, err := sessionCloseScript.Run(ctx, s.b.client, s.b.sessionKeys(id), s.b.channel, sessionWake(id), s.b.prefix).Int()
	if err != nil {
		return unavailable(ctx, "close session", err)
	}
	if n != 1 {
		return backend.ErrSessionExpired
	}
	return nil
}

// sessionKey is acquire.lua's KEYS[7] for an acquire in session id.
func (b *Backend) sessionKey(id string) (string, error) {
	if b.cluster() {
		return "", fmt.Errorf("redis: %s", NoClusterSessions)
	}
	if !lease.ValidID(id) {
		return "", backend.ErrSessionExpired
	}
	return b.sessionKeys(id)[0], nil
}
