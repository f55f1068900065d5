package main

import (
	"strings"
	"testing"

	"github.com/lockd/lockd/internal/testserver"
)

// lockd says at start what a Redis server without an append-only file costs,
// stays quiet about one that keeps it, and always names Redlock's fencing
// limit.
func TestRedisPersistenceWarnings(t *testing.T) {
	for _, tc := range []struct {
		name, backend string
		aof           bool
		want, notWant string
	}{
		{"redis without AOF", "redis", false, "keeps no append-only file", ""},
		{"redis with AOF", "redis", true, "", "keeps no append-only file"},
		{"redlock", "redlock", true, "fencing tokens are not safe", "keeps no append-only file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := 1
			if tc.backend == "redlock" {
				n = 3
			}
			srv := testserver.RedisWith(t, n, testserver.RedisOptions{AOF: tc.aof})
			var log syncBuffer
			startLogging(t, map[string]string{"LOCKD_LISTEN": "127.0.0.1:0", "LOCKD_BACKEND": tc.backend, "LOCKD_REDIS_ADDRS": strings.Join(srv.Addrs(), ",")}, &log)
			if tc.want != "" && !strings.Contains(log.String(), tc.want) {
				t.Errorf("start-up log lacks %q:\n%s", tc.want, log.String())
			}
			if tc.notWant != "" && strings.Contains(log.String(), tc.notWant) {
				t.Errorf("start-up log says %q:\n%s", tc.notWant, log.String())
			}
		})
	}
}
