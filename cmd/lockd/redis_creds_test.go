package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	redisb "github.com/lockd/lockd/backend/redis"
	"github.com/lockd/lockd/backend/redis/redlock"
	"github.com/lockd/lockd/internal/testserver"
)

// aclFor is the ACL line lockd suggests for its user on backendName.
func aclFor(backendName, prefix string) string {
	if backendName == "redlock" {
		return redlock.ACL(prefix)
	}
	return redisb.ACL(prefix)
}

// securedRedisSet starts n TLS-only servers that want client certificates,
// with the default user off, lockd's least-privilege user (password
// "lockd-pw") and, for each command in lacks, a user "no<command>" (password
// "weak-pw") with the same rights but that command.
func securedRedisSet(t *testing.T, n int, backendName, prefix string, lacks ...string) (*testserver.RedisSet, *testserver.CA) {
	t.Helper()
	ca := testserver.TestCA(t)
	acl := aclFor(backendName, prefix)
	users := []string{"default off", "lockd on >lockd-pw " + acl}
	for _, cmd := range lacks {
		weak := strings.Replace(acl+" ", " +"+cmd+" ", " ", 1)
		if weak == acl+" " {
			t.Fatalf("%s is not in %s", cmd, acl)
		}
		users = append(users, "no"+cmd+" on >weak-pw "+weak)
	}
	srv := testserver.RedisWith(t, n, testserver.RedisOptions{
		Users: users,
		TLS:   &testserver.RedisTLS{CA: ca, AuthClients: true},
	})
	return srv, ca
}

func redisSecretFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// redisStartFails runs lockd with env and returns run's error; it fails the test
// if lockd starts serving.
func redisStartFails(t *testing.T, env map[string]string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	out := &lineWriter{addr: make(chan string, 1)}
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, func(k string) string { return env[k] }, out, io.Discard) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("run returned nil without serving")
		}
		return err
	case base := <-out.addr:
		cancel()
		<-done
		t.Fatalf("lockd started (%s) and should not have", base)
	}
	return nil
}

// redisLockdEnv is the environment of a lockd that talks TLS to srv as user
// lockd with a client certificate.
func redisLockdEnv(t *testing.T, backendName string, srv *testserver.RedisSet, ca *testserver.CA) map[string]string {
	client := ca.MustIssue(t, "lockd-client", "lockd")
	return map[string]string{
		"LOCKD_LISTEN": "127.0.0.1:0", "LOCKD_BACKEND": backendName,
		"LOCKD_REDIS_ADDRS":         strings.Join(srv.Addrs(), ","),
		"LOCKD_REDIS_USER":          "lockd",
		"LOCKD_REDIS_PASSWORD_FILE": redisSecretFile(t, "redis-password", "lockd-pw\n"),
		"LOCKD_REDIS_TLS":           "true",
		"LOCKD_REDIS_CA":            ca.CertFile,
		"LOCKD_REDIS_CERT":          client.CertFile,
		"LOCKD_REDIS_KEY":           client.KeyFile,
	}
}

func redisEnvWith(env map[string]string, kv ...string) map[string]string {
	out := map[string]string{}
	for k, v := range env {
		out[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == "" {
			delete(out, kv[i])
		} else {
			out[kv[i]] = kv[i+1]
		}
	}
	return out
}

// redisAcquireRenewRelease drives one lock through lockd's HTTP API.
func redisAcquireRenewRelease(t *testing.T, base, key string) (token float64) {
	t.Helper()
	code, g := post(t, base+"/v1/locks/"+key+"/acquire", `{"ttl_ms": 10000, "owner": "creds"}`)
	if code != 200 {
		t.Fatalf("acquire: %d %v", code, g)
	}
	id := g["lease_id"].(string)
	if code, r := post(t, base+"/v1/locks/"+key+"/renew", `{"lease_id": "`+id+`"}`); code != 200 || r["token"] != g["token"] {
		t.Fatalf("renew: %d %v", code, r)
	}
	if code, r := post(t, base+"/v1/locks/"+key+"/release", `{"lease_id": "`+id+`"}`); code != 204 {
		t.Fatalf("release: %d %v", code, r)
	}
	return g["token"].(float64)
}

// lockd talks TLS with a client certificate to a Redis whose default user is
// off, as an ACL user with only the rights lockd suggests; with any
// credential wrong it refuses to start and says which.
func TestRedisCredentials(t *testing.T) {
	srv, ca := securedRedisSet(t, 1, "redis", "lockd:", "publish", "eval")
	env := redisLockdEnv(t, "redis", srv, ca)
	addr := srv.Addr(0)

	t.Run("works", func(t *testing.T) {
		base, out, stop := startInProcess(t, env)
		if !strings.Contains(out.String(), "(TLS, user lockd)") {
			t.Errorf("start-up line %q does not say TLS and user", out.String())
		}
		code, g := post(t, base+"/v1/locks/secret/acquire", `{"ttl_ms": 10000}`)
		if code != 200 {
			t.Fatalf("acquire: %d %v", code, g)
		}
		// The lock is in Redis, out of reach of a client without
		// credentials and of one with a wrong password.
		for _, tc := range []struct{ user, pw, want string }{{"", "", "NOAUTH"}, {"lockd", "guess", "WRONGPASS"}} {
			raw := goredis.NewClient(&goredis.Options{Addr: addr, Username: tc.user, Password: tc.pw, TLSConfig: srv.ClientTLS()})
			err := raw.HGetAll(t.Context(), "lockd:{secret}:lock").Err()
			err2 := raw.Del(t.Context(), "lockd:{secret}:lock").Err()
			raw.Close()
			if err == nil || !strings.Contains(err.Error(), tc.want) || err2 == nil || !strings.Contains(err2.Error(), tc.want) {
				t.Errorf("raw client (user %q): HGETALL: %v, DEL: %v; want %s", tc.user, err, err2, tc.want)
			}
		}
		if code, r := post(t, base+"/v1/locks/secret/release", `{"lease_id": "`+g["lease_id"].(string)+`"}`); code != 204 {
			t.Fatalf("release: %d %v", code, r)
		}
		redisAcquireRenewRelease(t, base, "creds-e2e")
		if err := stop(); err != nil {
			t.Fatalf("run: %v", err)
		}
	})

	other := testserver.TestCA(t)
	plain := testserver.Redis(t, 1)
	foreign := other.MustIssue(t, "foreign-client", "lockd")
	for _, tc := range []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"wrong password", redisEnvWith(env, "LOCKD_REDIS_PASSWORD_FILE", redisSecretFile(t, "pw", "guess\n")), []string{"redis " + addr + ": ", "WRONGPASS", "user lockd"}},
		{"no credentials", redisEnvWith(env, "LOCKD_REDIS_USER", "", "LOCKD_REDIS_PASSWORD_FILE", ""), []string{"redis " + addr + ": ", "NOAUTH", "--redis-password-file"}},
		{"no client certificate", redisEnvWith(env, "LOCKD_REDIS_CERT", "", "LOCKD_REDIS_KEY", ""), []string{"redis " + addr + ": ", "wants a client certificate", "--redis-cert"}},
		{"client certificate from another CA", redisEnvWith(env, "LOCKD_REDIS_CERT", foreign.CertFile, "LOCKD_REDIS_KEY", foreign.KeyFile), []string{"redis " + addr + ": ", "refused lockd's client certificate"}},
		{"untrusted CA", redisEnvWith(env, "LOCKD_REDIS_CA", other.CertFile), []string{"redis " + addr + ": ", "not signed by a CA lockd trusts", "unknown authority"}},
		{"user lacking PUBLISH", redisEnvWith(env, "LOCKD_REDIS_USER", "nopublish", "LOCKD_REDIS_PASSWORD_FILE", redisSecretFile(t, "pw", "weak-pw")), []string{"redis " + addr + ": ", "NOPERM user nopublish may not run: PUBLISH lockd:wake x", "ACL SETUSER nopublish " + redisb.ACL("lockd:")}},
		{"user lacking EVAL", redisEnvWith(env, "LOCKD_REDIS_USER", "noeval", "LOCKD_REDIS_PASSWORD_FILE", redisSecretFile(t, "pw", "weak-pw")), []string{"redis " + addr + ": ", "NOPERM", "'eval'", "ACL SETUSER noeval " + redisb.ACL("lockd:")}},
		{"user outside its key prefix", redisEnvWith(env, "LOCKD_REDIS_PREFIX", "other:"), []string{"redis " + addr + ": ", "NOPERM user lockd may not run: SUBSCRIBE other:wake, HGET other:{lockd-startup-check}:lock id"}},
		{"plain TCP to a TLS port", redisEnvWith(env, "LOCKD_REDIS_TLS", "", "LOCKD_REDIS_CA", "", "LOCKD_REDIS_CERT", "", "LOCKD_REDIS_KEY", ""), []string{"redis " + addr + ": ", "--redis-tls"}},
		{"TLS to a plain-TCP server", redisEnvWith(env, "LOCKD_REDIS_ADDRS", plain.Addr(0)), []string{"redis " + plain.Addr(0) + ": ", "does not speak TLS"}},
		{"user without password file", redisEnvWith(env, "LOCKD_REDIS_PASSWORD_FILE", ""), []string{"--redis-user needs --redis-password-file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := redisStartFails(t, tc.env)
			t.Logf("lockd refused to start: %v", err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "lockd-pw") || strings.Contains(err.Error(), "guess") {
				t.Errorf("error %q shows a password", err)
			}
		})
	}
}

// Redlock: the same flags reach every master; a master down at start is
// tolerated (a majority answers), a credential refused by any master is not.
func TestRedlockCredentials(t *testing.T) {
	srv, ca := securedRedisSet(t, 3, "redlock", "lockd:rl:", "incr")
	env := redisLockdEnv(t, "redlock", srv, ca)

	base, out, stop := startInProcess(t, env)
	if !strings.Contains(out.String(), "redlock over 3 masters (TLS, user lockd)") {
		t.Errorf("start-up line %q", out.String())
	}
	first := redisAcquireRenewRelease(t, base, "rl-creds")
	if second := redisAcquireRenewRelease(t, base, "rl-creds"); second <= first {
		t.Errorf("second token %v, want above %v", second, first)
	}
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
	raw := goredis.NewClient(&goredis.Options{Addr: srv.Addr(1), TLSConfig: srv.ClientTLS()})
	if err := raw.Get(t.Context(), "lockd:rl:{rl-creds}:fence").Err(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Errorf("raw client without credentials reading the fence counter on master 1: %v, want NOAUTH", err)
	}
	raw.Close()

	t.Run("user lacking INCR", func(t *testing.T) {
		err := redisStartFails(t, redisEnvWith(env, "LOCKD_REDIS_USER", "noincr", "LOCKD_REDIS_PASSWORD_FILE", redisSecretFile(t, "pw", "weak-pw")))
		for _, w := range []string{"NOPERM user noincr may not run: INCR lockd:rl:", "ACL SETUSER noincr " + redlock.ACL("lockd:rl:")} {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q lacks %q", err, w)
			}
		}
	})
	t.Run("one master down", func(t *testing.T) {
		if err := srv.Kill(2); err != nil {
			t.Fatal(err)
		}
		base, out, stop := startInProcess(t, env)
		if !strings.Contains(out.String(), "1 did not answer at start") {
			t.Errorf("start-up line %q does not mention the missing master", out.String())
		}
		redisAcquireRenewRelease(t, base, "rl-two-of-three")
		if err := stop(); err != nil {
			t.Fatalf("run: %v", err)
		}
		err := redisStartFails(t, redisEnvWith(env, "LOCKD_REDIS_PASSWORD_FILE", redisSecretFile(t, "pw", "guess")))
		if !strings.Contains(err.Error(), "WRONGPASS") {
			t.Errorf("wrong password with a master down: %v, want WRONGPASS", err)
		}
	})
}
