package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	goredis "github.com/redis/go-redis/v9"

	redisb "github.com/lockd/lockd/backend/redis"
	"github.com/lockd/lockd/backend/redis/redlock"
)

// redisConfig is what --backend redis and --backend redlock are told. The
// credentials apply to every address (every Redlock master).
type redisConfig struct {
	addrs        string
	prefix       string
	user         string
	passwordFile string
	tls          bool
	ca           string
	cert         string
	key          string
}

func (c *redisConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.addrs, "redis-addrs", "", "comma-separated host:port: one Redis (or a Sentinel/cluster seed list) for --backend redis, the independent masters for --backend redlock")
	fs.StringVar(&c.prefix, "redis-prefix", "", "prefix of every Redis key lockd writes (default lockd: for redis, lockd:rl: for redlock)")
	fs.StringVar(&c.user, "redis-user", "", "Redis ACL user lockd authenticates as (empty: the default user); needs --redis-password-file")
	fs.StringVar(&c.passwordFile, "redis-password-file", "", "file holding the Redis password (requirepass, or the ACL user's); never pass a password itself")
	fs.BoolVar(&c.tls, "redis-tls", false, "talk TLS to Redis (the server's tls-port)")
	fs.StringVar(&c.ca, "redis-ca", "", "with --redis-tls: CA certificate (PEM) that signed the Redis servers' certificates (default: the system's roots)")
	fs.StringVar(&c.cert, "redis-cert", "", "with --redis-tls: client certificate (PEM) for servers with tls-auth-clients yes")
	fs.StringVar(&c.key, "redis-key", "", "with --redis-tls: the client certificate's private key (PEM)")
}

// redisCreds is how lockd authenticates to every Redis server.
type redisCreds struct {
	user, password string
	tls            *tls.Config // nil: plain TCP
}

// creds reads the password file and the TLS files named by the flags.
func (c redisConfig) creds() (redisCreds, error) {
	var cr redisCreds
	if c.user != "" && c.passwordFile == "" {
		return cr, errors.New("--redis-user needs --redis-password-file (a user without a password would silently be Redis's default user)")
	}
	if c.passwordFile != "" {
		b, err := os.ReadFile(c.passwordFile)
		if err != nil {
			return cr, fmt.Errorf("--redis-password-file: %w", err)
		}
		cr.user, cr.password = c.user, strings.TrimRight(string(b), "\r\n")
		if cr.password == "" {
			return cr, fmt.Errorf("--redis-password-file: %s is empty", c.passwordFile)
		}
	}
	if !c.tls {
		if c.ca != "" || c.cert != "" || c.key != "" {
			return cr, errors.New("--redis-ca, --redis-cert and --redis-key need --redis-tls")
		}
		return cr, nil
	}
	var err error
	cr.tls, err = clientTLS("redis-ca", c.ca, "redis-cert", c.cert, "redis-key", c.key)
	return cr, err
}

// redisNeeds lists, as commands with sample arguments under prefix, what
// lockd's Redis user must be allowed beyond PING and EVAL (which the startup
// check runs itself): the commands the backend sends and the ones its Lua
// scripts call, on the keys and channel they touch. Redis 7 checks a
// script's commands and keys against the user's ACL as it runs them.
// TestRedisNeedsCoverTheBackends keeps this in step with the backends.
func redisNeeds(backendName, prefix string) [][]string {
	base := prefix + "{lockd-startup-check}:"
	lock, fence, queue, beats := base+"lock", base+"fence", base+"q", base+"qt"
	if backendName == "redlock" {
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
		}
	}
	wake := prefix + "wake"
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
		{"ZADD", beats, "1", "x"},
		{"ZREM", beats, "x"},
		{"ZSCORE", beats, "x"},
		{"ZCOUNT", beats, "0", "1"},
		{"PUBLISH", wake, "x"},
		{"XADD", base + "ev", "*", "n", "1"},
		{"XREVRANGE", base + "ev", "+", "-"},
		{"XREAD", "STREAMS", base + "ev", "0-0"},
		{"XRANGE", base + "ev", "-", "+"},
	}
}

// redisACL is the least-privilege ACL rule list for lockd's user: the
// prefix's keys (and wake channel for redis), and only the commands lockd
// uses.
func redisACL(backendName, prefix string) string {
	p := aclGlobEscape(prefix)
	rules := []string{"resetchannels", "~" + p + "*"}
	if backendName != "redlock" {
		rules = append(rules, "&"+p+"*")
	}
	rules = append(rules, "-@all", "+ping", "+eval")
	for _, n := range redisNeeds(backendName, prefix) {
		rules = append(rules, "+"+strings.ToLower(n[0]))
	}
	return strings.Join(rules, " ")
}

func aclGlobEscape(s string) string {
	var sb strings.Builder
	for _, r := range s {
		switch r {
		case '*', '?', '[', ']', '\\':
			sb.WriteByte('\\')
		}
		sb.WriteRune(r)
	}
	return sb.String()
}

// aclCheckLua asks Redis, as lockd's user, which of the commands in ARGV
// (each as a count then the command and its arguments) the user may NOT
// run; it runs no command itself.
const aclCheckLua = `
local denied, i = {}, 1
while i <= #ARGV do
  local n, cmd = tonumber(ARGV[i]), {}
  for j = 1, n do cmd[j] = ARGV[i + j] end
  local ok, allowed = pcall(redis.acl_check_cmd, unpack(cmd))
  if not ok or not allowed then denied[#denied + 1] = table.concat(cmd, ' ') end
  i = i + n + 1
end
return denied`

// errUnreachable marks a server that did not answer at all, as opposed to
// one that refused lockd's credentials or TLS.
var errUnreachable = errors.New("unreachable")

// checkRedis makes sure the server at addr takes lockd's credentials and
// lets lockd's user do what the backend needs. Its error starts with
// "redis <addr>: " and names the cause.
func checkRedis(ctx context.Context, addr, backendName, prefix string, cr redisCreds) error {
	c := goredis.NewClient(&goredis.Options{
		Addr: addr, Username: cr.user, Password: cr.password, TLSConfig: cr.tls,
		MaxRetries: -1, DialerRetries: 1, DialTimeout: 3 * time.Second, ContextTimeoutEnabled: true,
		PoolSize: 1,
	})
	defer c.Close()
	if err := c.Ping(ctx).Err(); err != nil {
		// A plain-TCP Redis never answers a TLS ClientHello: the handshake
		// just times out. Say so rather than call it unreachable.
		if cr.tls != nil && isTimeout(err) && speaksPlainRESP(addr) {
			return fmt.Errorf("redis %s: TLS: the server does not speak TLS on this port, it answers plain TCP (drop --redis-tls, or use its tls-port): %w", addr, err)
		}
		if errors.Is(err, syscall.ECONNREFUSED) || isTimeout(err) {
			return fmt.Errorf("redis %s: %w: %w", addr, errUnreachable, err)
		}
		return fmt.Errorf("redis %s: %s", addr, explainRedisErr(err, cr))
	}
	var args []any
	for _, n := range redisNeeds(backendName, prefix) {
		args = append(args, len(n))
		for _, a := range n {
			args = append(args, a)
		}
	}
	grant := fmt.Sprintf("grant lockd's user at least: ACL SETUSER %s %s", aclUserName(cr.user), redisACL(backendName, prefix))
	denied, err := c.Eval(ctx, aclCheckLua, nil, args...).StringSlice()
	switch {
	case err != nil && strings.Contains(err.Error(), "NOPERM"):
		return fmt.Errorf("redis %s: %s; %s", addr, explainRedisErr(err, cr), grant)
	case err != nil && strings.Contains(err.Error(), "acl_check_cmd"):
		// Redis before 7.0 cannot be asked; the first request will tell.
		return nil
	case err != nil:
		return fmt.Errorf("redis %s: checking lockd's rights: %s", addr, explainRedisErr(err, cr))
	}
	if len(denied) > 0 {
		return fmt.Errorf("redis %s: NOPERM user %s may not run: %s; %s", addr, aclUserName(cr.user), strings.Join(denied, ", "), grant)
	}
	return nil
}

func aclUserName(user string) string {
	if user == "" {
		return "default"
	}
	return user
}

// explainRedisErr turns a connection or command error into what an
// operator has to fix. It never includes the password.
func explainRedisErr(err error, cr redisCreds) string {
	msg := err.Error()
	var (
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		alert     tls.AlertError
		record    tls.RecordHeaderError
	)
	switch {
	case strings.Contains(msg, "WRONGPASS"):
		return fmt.Sprintf("%s (user %s: check --redis-user and --redis-password-file)", msg, aclUserName(cr.user))
	case strings.Contains(msg, "NOAUTH"):
		return msg + " (the server wants a password: give --redis-password-file, and --redis-user for an ACL user)"
	case strings.Contains(msg, "NOPERM"):
		return msg
	case errors.As(err, &unknownCA):
		return "TLS: the server's certificate is not signed by a CA lockd trusts (--redis-ca): " + msg
	case errors.As(err, &hostname):
		return "TLS: the server's certificate does not name this address: " + msg
	case errors.As(err, &invalid):
		return "TLS: the server's certificate is not valid: " + msg
	case errors.As(err, &alert) && (alert == 42 || alert == 46 || alert == 48 || alert == 116), clientCertRefused(msg):
		// Alerts bad_certificate, certificate_unknown, unknown_ca and
		// certificate_required: the server did not accept our side.
		if cr.tls != nil && len(cr.tls.Certificates) == 0 {
			return "TLS: the server wants a client certificate (tls-auth-clients yes): give --redis-cert and --redis-key: " + msg
		}
		return "TLS: the server refused lockd's client certificate (--redis-cert is not signed by the server's tls-ca-cert-file?): " + msg
	case errors.As(err, &record):
		return "TLS: the server does not speak TLS on this port (drop --redis-tls, or use its tls-port): " + msg
	case cr.tls == nil && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)):
		return "the server closed a plain-TCP connection (a TLS-only server? then --redis-tls): " + msg
	}
	return msg
}

// clientCertRefused recognises the server's TLS alerts about lockd's client
// certificate in an error go-redis may have flattened to text.
func clientCertRefused(msg string) bool {
	for _, a := range []string{"bad certificate", "certificate unknown", "unknown certificate authority", "certificate required"} {
		if strings.Contains(msg, "remote error: tls: "+a) {
			return true
		}
	}
	return false
}

// speaksPlainRESP reports whether addr answers an inline PING in plain TCP.
func speaksPlainRESP(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	b := make([]byte, 1)
	_, err = io.ReadFull(c, b)
	return err == nil && (b[0] == '+' || b[0] == '-')
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// checkAll runs checkRedis on every address at once. It returns each
// address's error, and the first one that is not errUnreachable (a server
// that answered but refused lockd's credentials, TLS or ACL).
func checkAll(ctx context.Context, addrs []string, backendName, prefix string, cr redisCreds) (errs []error, refused error) {
	errs = make([]error, len(addrs))
	var wg sync.WaitGroup
	for i, a := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = checkRedis(ctx, a, backendName, prefix, cr)
		}()
	}
	wg.Wait()
	for _, e := range errs {
		if e != nil && !errors.Is(e, errUnreachable) {
			return errs, e
		}
	}
	return errs, nil
}

func openRedis(ctx context.Context, c redisConfig, log *slog.Logger) (*store, error) {
	addrs := splitList(c.addrs)
	if len(addrs) == 0 {
		return nil, errors.New("--backend redis needs --redis-addrs host:port")
	}
	cr, err := c.creds()
	if err != nil {
		return nil, err
	}
	prefix := c.prefix
	if prefix == "" {
		prefix = "lockd:"
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	errs, _ := checkAll(cctx, addrs, "redis", prefix, cr)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	cli := redisClient(addrs, cr)
	b, err := redisb.New(ctx, cli, redisb.Options{Prefix: prefix})
	if err != nil {
		cli.Close()
		return nil, fmt.Errorf("redis %s: %w", strings.Join(addrs, ","), err)
	}
	warnIfNotPersistent(ctx, cli, "redis "+strings.Join(addrs, ","), log)
	return &store{b: b, describe: "redis at " + strings.Join(addrs, ",") + describeCreds(cr)}, nil
}

// warnIfNotPersistent says at start what a Redis server without an
// append-only file costs: the README's safety table in one line.
func warnIfNotPersistent(ctx context.Context, cli goredis.UniversalClient, what string, log *slog.Logger) {
	aof, err := redisb.AppendOnly(ctx, cli)
	switch {
	case err != nil:
		log.Info("could not tell whether Redis keeps an append-only file (INFO persistence); without one (appendonly yes, appendfsync always) a restart loses every lock: see the README's Redis safety table", "server", what, "err", err)
	case !aof:
		log.Warn("Redis keeps no append-only file (appendonly no): a restart loses every lock, a held lock can be granted twice and fencing tokens go back; set appendonly yes and appendfsync always (README: Redis and Redlock)", "server", what)
	}
}

// redisClient is the redis backend's client. go-redis retries a command
// whose reply was lost (three times by default), but acquire, release and
// the queue scripts are not idempotent: a re-sent acquire met its own grant
// as "held" and left it orphaned for a full TTL. So the client never
// retries (MaxRetries -1); the backend undoes what a lost reply may have
// done and reports ErrUnavailable. ContextTimeoutEnabled makes every socket
// read and write honour the caller's context deadline, so a cancelled call
// cannot hang on a silent server.
func redisClient(addrs []string, cr redisCreds) goredis.UniversalClient {
	return goredis.NewUniversalClient(&goredis.UniversalOptions{
		Addrs: addrs, Username: cr.user, Password: cr.password, TLSConfig: cr.tls,
		MaxRetries: -1, ContextTimeoutEnabled: true,
	})
}

func describeCreds(cr redisCreds) string {
	var parts []string
	if cr.tls != nil {
		parts = append(parts, "TLS")
	}
	if cr.password != "" {
		parts = append(parts, "user "+aclUserName(cr.user))
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

func openRedlock(c redisConfig, log *slog.Logger) (*store, error) {
	addrs := splitList(c.addrs)
	if len(addrs) == 0 {
		return nil, errors.New("--backend redlock needs --redis-addrs a,b,c,... (independent masters, an odd number)")
	}
	cr, err := c.creds()
	if err != nil {
		return nil, err
	}
	prefix := c.prefix
	if prefix == "" {
		prefix = "lockd:rl:"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// A master that refuses lockd's credentials, TLS or ACL is a mistake to
	// fix before starting; a master that is down is what Redlock tolerates,
	// as long as a majority is up.
	errs, refused := checkAll(ctx, addrs, "redlock", prefix, cr)
	if refused != nil {
		return nil, refused
	}
	down := 0
	for _, e := range errs {
		if e != nil {
			down++
		}
	}
	if quorum := len(addrs)/2 + 1; len(addrs)-down < quorum {
		return nil, fmt.Errorf("redlock: %d of %d masters answered, %d needed: %w", len(addrs)-down, len(addrs), quorum, errors.Join(errs...))
	}
	var masters []goredis.UniversalClient
	for i, a := range addrs {
		m := goredis.NewClient(&goredis.Options{Addr: a, Username: cr.user, Password: cr.password, TLSConfig: cr.tls, MaxRetries: -1, DialerRetries: 1, ContextTimeoutEnabled: true})
		if errs[i] == nil {
			// One connection made now, so that the first acquire's short
			// per-master timeout is not spent on a TLS handshake.
			_ = m.Ping(ctx).Err()
		}
		masters = append(masters, m)
	}
	b, err := redlock.New(masters, redlock.Options{Prefix: prefix})
	if err != nil {
		for _, m := range masters {
			m.Close()
		}
		return nil, err
	}
	log.Warn("Redlock's fencing tokens are not safe under failures: a master that restarts empty or whose clock jumps lets a second majority grant the lock with a smaller token; use etcd or ZooKeeper where fencing must hold (README: Redis and Redlock)")
	for i, m := range masters {
		if errs[i] == nil {
			warnIfNotPersistent(ctx, m, "redlock master "+addrs[i], log)
		}
	}
	describe := fmt.Sprintf("redlock over %d masters%s", len(addrs), describeCreds(cr))
	if down > 0 {
		describe += fmt.Sprintf("; %d did not answer at start", down)
	}
	return &store{b: b, describe: describe}, nil
}

// redisLog sends go-redis's own messages (reconnects, pool errors: many a
// second while a master is down) to lockd's log at debug level instead of
// stderr.
type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(ctx context.Context, format string, v ...any) {
	l.log.Debug("redis client", "msg", fmt.Sprintf(format, v...))
}
