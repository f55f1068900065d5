package store

// Start-up: reaching a Redis server with lockd's credentials, checking that
// lockd's user may do what a backend needs, and saying what to fix when not.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
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

	"github.com/lockd/lockd/internal/tlsfiles"
)

// Config is what lockd's --redis-* flags say, for --backend redis and
// --backend redlock alike. The credentials apply to every address (every
// Redlock master). Errors name the flags.
type Config struct {
	Addrs        []string // --redis-addrs
	Prefix       string   // --redis-prefix; each backend has its default
	User         string   // --redis-user (ACL user)
	PasswordFile string   // --redis-password-file
	TLS          bool     // --redis-tls
	CA           string   // --redis-ca
	Cert         string   // --redis-cert
	Key          string   // --redis-key

	Logger *slog.Logger // start-up warnings and go-redis's own messages (at debug)
}

// Log is c.Logger, or one that discards.
func (c Config) Log() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Logger
}

// Creds is how lockd authenticates to every Redis server.
type Creds struct {
	User, Password string
	TLS            *tls.Config // nil: plain TCP
}

// Creds reads the password file and the TLS files named by the flags.
func (c Config) Creds() (Creds, error) {
	var cr Creds
	if c.User != "" && c.PasswordFile == "" {
		return cr, errors.New("--redis-user needs --redis-password-file (a user without a password would silently be Redis's default user)")
	}
	if c.PasswordFile != "" {
		b, err := os.ReadFile(c.PasswordFile)
		if err != nil {
			return cr, fmt.Errorf("--redis-password-file: %w", err)
		}
		cr.User, cr.Password = c.User, strings.TrimRight(string(b), "\r\n")
		if cr.Password == "" {
			return cr, fmt.Errorf("--redis-password-file: %s is empty", c.PasswordFile)
		}
	}
	if !c.TLS {
		if c.CA != "" || c.Cert != "" || c.Key != "" {
			return cr, errors.New("--redis-ca, --redis-cert and --redis-key need --redis-tls")
		}
		return cr, nil
	}
	var err error
	cr.TLS, err = tlsfiles.Client(tlsfiles.Files{CA: c.CA, Cert: c.Cert, Key: c.Key, CAFlag: "redis-ca", CertFlag: "redis-cert", KeyFlag: "redis-key"})
	return cr, err
}

// ACL is the least-privilege ACL rule list for lockd's user: the prefix's
// keys (and, with channels, its channels), and only the commands in needs
// (as Needs lists them) beyond PING and EVAL.
func ACL(prefix string, needs [][]string, channels bool) string {
	p := GlobEscape(prefix)
	rules := []string{"resetchannels", "~" + p + "*"}
	if channels {
		rules = append(rules, "&"+p+"*")
	}
	rules = append(rules, "-@all", "+ping", "+eval")
	for _, n := range needs {
		rules = append(rules, "+"+strings.ToLower(n[0]))
	}
	return strings.Join(rules, " ")
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

// ErrUnreachable marks a server that did not answer at all, as opposed to
// one that refused lockd's credentials or TLS.
var ErrUnreachable = errors.New("unreachable")

// Check makes sure the server at addr takes lockd's credentials and lets
// lockd's user run needs (commands with sample arguments, as a backend's
// Needs lists them); acl is the rule list to suggest when not. Its error
// starts with "redis <addr>: " and names the cause.
func Check(ctx context.Context, addr string, needs [][]string, acl string, cr Creds) error {
	c := goredis.NewClient(&goredis.Options{
		Addr: addr, Username: cr.User, Password: cr.Password, TLSConfig: cr.TLS,
		MaxRetries: -1, DialerRetries: 1, DialTimeout: 3 * time.Second, ContextTimeoutEnabled: true,
		PoolSize: 1,
	})
	defer c.Close()
	if err := c.Ping(ctx).Err(); err != nil {
		// A plain-TCP Redis never answers a TLS ClientHello: the handshake
		// just times out. Say so rather than call it unreachable.
		if cr.TLS != nil && isTimeout(err) && speaksPlainRESP(addr) {
			return fmt.Errorf("redis %s: TLS: the server does not speak TLS on this port, it answers plain TCP (drop --redis-tls, or use its tls-port): %w", addr, err)
		}
		if errors.Is(err, syscall.ECONNREFUSED) || isTimeout(err) {
			return fmt.Errorf("redis %s: %w: %w", addr, ErrUnreachable, err)
		}
		return fmt.Errorf("redis %s: %s", addr, Explain(err, cr))
	}
	var args []any
	for _, n := range needs {
		args = append(args, len(n))
		for _, a := range n {
			args = append(args, a)
		}
	}
	grant := fmt.Sprintf("grant lockd's user at least: ACL SETUSER %s %s", UserName(cr.User), acl)
	denied, err := c.Eval(ctx, aclCheckLua, nil, args...).StringSlice()
	switch {
	case err != nil && strings.Contains(err.Error(), "NOPERM"):
		return fmt.Errorf("redis %s: %s; %s", addr, Explain(err, cr), grant)
	case err != nil && strings.Contains(err.Error(), "acl_check_cmd"):
		// Redis before 7.0 cannot be asked; the first request will tell.
		return nil
	case err != nil:
		return fmt.Errorf("redis %s: checking lockd's rights: %s", addr, Explain(err, cr))
	}
	if len(denied) > 0 {
		return fmt.Errorf("redis %s: NOPERM user %s may not run: %s; %s", addr, UserName(cr.User), strings.Join(denied, ", "), grant)
	}
	return nil
}

// UserName is the Redis user lockd acts as.
func UserName(user string) string {
	if user == "" {
		return "default"
	}
	return user
}

// Explain turns a connection or command error into what an
// operator has to fix. It never includes the password.
func Explain(err error, cr Creds) string {
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
		return fmt.Sprintf("%s (user %s: check --redis-user and --redis-password-file)", msg, UserName(cr.User))
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
		if cr.TLS != nil && len(cr.TLS.Certificates) == 0 {
			return "TLS: the server wants a client certificate (tls-auth-clients yes): give --redis-cert and --redis-key: " + msg
		}
		return "TLS: the server refused lockd's client certificate (--redis-cert is not signed by the server's tls-ca-cert-file?): " + msg
	case errors.As(err, &record):
		return "TLS: the server does not speak TLS on this port (drop --redis-tls, or use its tls-port): " + msg
	case cr.TLS == nil && (errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)):
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

// CheckAll runs Check on every address at once. It returns each
// address's error, and the first one that is not ErrUnreachable (a server
// that answered but refused lockd's credentials, TLS or ACL).
func CheckAll(ctx context.Context, addrs []string, needs [][]string, acl string, cr Creds) (errs []error, refused error) {
	errs = make([]error, len(addrs))
	var wg sync.WaitGroup
	for i, a := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = Check(ctx, a, needs, acl, cr)
		}()
	}
	wg.Wait()
	for _, e := range errs {
		if e != nil && !errors.Is(e, ErrUnreachable) {
			return errs, e
		}
	}
	return errs, nil
}

// WarnIfNotPersistent says at start what a Redis server without an
// append-only file costs: the README's safety table in one line.
func WarnIfNotPersistent(ctx context.Context, cli goredis.UniversalClient, what string, log *slog.Logger) {
	aof, err := AppendOnly(ctx, cli)
	switch {
	case err != nil:
		log.Info("could not tell whether Redis keeps an append-only file (INFO persistence); without one (appendonly yes, appendfsync always) a restart loses every lock: see the README's Redis safety table", "server", what, "err", err)
	case !aof:
		log.Warn("Redis keeps no append-only file (appendonly no): a restart loses every lock, a held lock can be granted twice and fencing tokens go back; set appendonly yes and appendfsync always (README: Redis and Redlock)", "server", what)
	}
}

// Client is the redis backend's client. go-redis retries a command
// whose reply was lost (three times by default), but acquire, release and
// the queue scripts are not idempotent: a re-sent acquire met its own grant
// as "held" and left it orphaned for a full TTL. So the client never
// retries (MaxRetries -1); the backend undoes what a lost reply may have
// done and reports ErrUnavailable. ContextTimeoutEnabled makes every socket
// read and write honour the caller's context deadline, so a cancelled call
// cannot hang on a silent server.
func Client(addrs []string, cr Creds) goredis.UniversalClient {
	return goredis.NewUniversalClient(&goredis.UniversalOptions{
		Addrs: addrs, Username: cr.User, Password: cr.Password, TLSConfig: cr.TLS,
		MaxRetries: -1, ContextTimeoutEnabled: true,
	})
}

// Describe says how lockd reaches the servers, for the start-up line.
func (cr Creds) Describe() string {
	var parts []string
	if cr.TLS != nil {
		parts = append(parts, "TLS")
	}
	if cr.Password != "" {
		parts = append(parts, "user "+UserName(cr.User))
	}
	if len(parts) == 0 {
		return ""
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

// AppendOnly reports whether the server keeps an append-only file (INFO
// persistence, aof_enabled): without one a restart loses every grant and
// every fencing counter, so a lock can be granted twice and tokens go back.
// (Whether it fsyncs every write, as safety needs, only CONFIG GET
// appendfsync tells, which lockd's least-privilege user may not run.) An
// error when INFO is refused or the reply has no aof_enabled line.
func AppendOnly(ctx context.Context, c goredis.UniversalClient) (bool, error) {
	info, err := c.Info(ctx, "persistence").Result()
	if err != nil {
		return false, err
	}
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "aof_enabled:"); ok {
			return v == "1", nil
		}
	}
	return false, fmt.Errorf("redis INFO persistence has no aof_enabled line")
}

// Logger sends go-redis's own messages (reconnects, pool errors: many a
// second while a master is down) to lockd's log at debug level instead of
// stderr.
type Logger struct{ Log *slog.Logger }

func (l Logger) Printf(ctx context.Context, format string, v ...any) {
	l.Log.Debug("redis client", "msg", fmt.Sprintf(format, v...))
}
