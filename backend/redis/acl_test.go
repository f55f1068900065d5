package redis

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/lockd/lockd/backend/redis/redlock"
)

// The ACL lines docs/backend-credentials.md gives operators; lockd prints
// the same in its NOPERM errors.
const (
	readmeRedisACL   = "resetchannels ~lockd:* &lockd:* -@all +ping +eval +evalsha +subscribe +scan +time +hget +hmget +hset +del +pexpire +pttl +incr +lindex +lpop +rpush +lrem +lrange +hgetall +hdel +zadd +zrem +zscore +zcount +publish +xadd +xrevrange +xread +xrange +sadd +srem +smembers"
	readmeRedlockACL = "resetchannels ~lockd:rl:* -@all +ping +eval +evalsha +scan +hmget +hget +hset +del +pexpire +pttl +incr +get +set +time +zadd +zrem +zcount +zrangebyscore"
)

func TestACLLine(t *testing.T) {
	if got := ACL("lockd:"); got != readmeRedisACL {
		t.Errorf("redis ACL =\n%s\nwant (the README's)\n%s", got, readmeRedisACL)
	}
	if got := redlock.ACL("lockd:rl:"); got != readmeRedlockACL {
		t.Errorf("redlock ACL =\n%s\nwant (the README's)\n%s", got, readmeRedlockACL)
	}
	doc, err := os.ReadFile("../../docs/backend-credentials.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{readmeRedisACL, readmeRedlockACL} {
		if !strings.Contains(string(doc), "ACL SETUSER lockd on >CHANGE-ME "+line+"\n") {
			t.Errorf("docs/backend-credentials.md does not give the ACL line lockd needs:\n%s", line)
		}
	}
	if got := ACL("a*b:"); !strings.Contains(got, `~a\*b:* &a\*b:*`) {
		t.Errorf("ACL for a prefix with a glob character = %s, want it escaped", got)
	}
}

// Needs (what the start-up check asks Redis about, and the ACL lockd
// suggests) names every command each backend sends or its scripts call.
func TestNeedsCoverTheScripts(t *testing.T) {
	callRE := regexp.MustCompile(`redis\.call\('([A-Z]+)'`)
	goRE := regexp.MustCompile(`\b(?:client|c|m)\.([A-Z][A-Za-z]*)\((?:ctx|c)\b`)
	for _, tc := range []struct {
		backend, dir, src string
		needs             [][]string
	}{
		{"redis", ".", "redis,events,watch", Needs("p:")},
		{"redlock", "redlock", "redlock", redlock.Needs("p:")},
	} {
		need := map[string]bool{"PING": true, "EVAL": true}
		for _, n := range tc.needs {
			need[n[0]] = true
		}
		used := map[string]string{}
		scripts, _ := filepath.Glob(filepath.Join(tc.dir, "scripts", "*.lua"))
		if len(scripts) == 0 {
			t.Fatalf("no scripts in %s/scripts", tc.dir)
		}
		for _, f := range scripts {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range callRE.FindAllStringSubmatch(string(b), -1) {
				used[m[1]] = filepath.Base(f)
			}
		}
		for _, name := range strings.Split(tc.src, ",") { // the files that send commands
			name += ".go"
			src, err := os.ReadFile(filepath.Join(tc.dir, name))
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range goRE.FindAllStringSubmatch(string(src), -1) {
				cmd := strings.ToUpper(m[1])
				if c, ok := strings.CutSuffix(cmd, "RANGEN"); ok { // go-redis's XRangeN is XRANGE with COUNT
					cmd = c + "RANGE"
				}
				used[cmd] = name
			}
			if strings.Contains(string(src), "Script.Run(") {
				used["EVALSHA"], used["EVAL"] = name+" (Script.Run)", name+" (Script.Run)"
			}
		}
		if len(used) < 5 {
			t.Fatalf("%s: found only %v; the patterns no longer match the code", tc.backend, used)
		}
		for cmd, where := range used {
			if !need[cmd] {
				t.Errorf("%s: %s (in %s) is missing from Needs: the startup check and the suggested ACL would miss it", tc.backend, cmd, where)
			}
		}
	}
}
