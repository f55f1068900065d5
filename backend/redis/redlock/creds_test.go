package redlock

import (
	"strings"
	"testing"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/backend/backendtest"
	"github.com/lockd/lockd/internal/testserver"
)

// lockdACL is the least-privilege ACL user this backend needs on every
// master under the default prefix "lockd:rl:" (the README's ACL SETUSER
// line): its keys, no channels, EVAL/EVALSHA for the scripts and every
// command they call, HMGET for Inspect, SCAN for List, PING.
const lockdACL = "lockd on >lockd-pw resetchannels ~lockd:rl:* -@all " +
	"+ping +eval +evalsha +scan +hmget " +
	"+hget +hset +del +pexpire +pttl +incr +get +set +time +zadd +zrem +zcount +zrangebyscore"

// Every promise Redlock makes holds over three TLS-only masters that require
// client certificates, as the least-privilege user.
func TestConformanceTLSWithLeastPrivilegeUser(t *testing.T) {
	srv := testserver.RedisWith(t, 3, testserver.RedisOptions{
		Users: []string{"default off", lockdACL},
		TLS:   &testserver.RedisTLS{CA: testserver.TestCA(t), AuthClients: true},
	})
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		t.Helper()
		var clients []goredis.UniversalClient
		for _, a := range srv.Addrs() {
			clients = append(clients, goredis.NewClient(&goredis.Options{
				Addr: a, Username: "lockd", Password: "lockd-pw", TLSConfig: srv.ClientTLS(),
				MaxRetries: -1, DialerRetries: 1, ContextTimeoutEnabled: true,
			}))
		}
		b, err := New(clients, testOptions)
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		t.Cleanup(func() { _ = b.Close() })
		return b
	}, conformanceOptions)

	// The same user cannot reach a key outside its prefix on any master.
	for i, a := range srv.Addrs() {
		c := goredis.NewClient(&goredis.Options{Addr: a, Username: "lockd", Password: "lockd-pw", TLSConfig: srv.ClientTLS()})
		err := c.Set(t.Context(), "lockd:other", "1", 0).Err()
		_ = c.Close()
		if err == nil || !strings.Contains(err.Error(), "NOPERM") {
			t.Errorf("master %d: SET lockd:other as lockd: %v, want NOPERM (the pattern is lockd:rl:*)", i, err)
		}
	}
}
