package testserver

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ErrRedisMissing is returned by StartRedis when redis-server is not
// installed.
var ErrRedisMissing = errors.New("testserver: redis-server not installed")

// redisStartTimeout bounds how long a redis-server may take to accept
// connections on a busy two-core machine.
const redisStartTimeout = 20 * time.Second

// RedisOptions configures StartRedis. The zero value starts servers that keep
// nothing on disk.
type RedisOptions struct {
	// AOF turns on the append-only file with fsync on every write, so that
	// a killed and restarted server keeps what it acknowledged. Default off
	// (--appendonly no, --save "": a restart loses everything).
	AOF bool
	// Password, when set, is the default user's password (--requirepass):
	// a client must AUTH before any command. Default none.
	Password string
	// Users are ACL users, each one `user` directive of redis.conf without
	// the word "user", e.g. "lockd on >secret ~lockd:* &lockd:* -@all +ping".
	// Rules are separated by spaces, so a password cannot contain one.
	// "default off" here disables the default user. Default none.
	Users []string
	// TLS, when set, makes the servers speak only TLS (--port 0) with a
	// certificate from TLS.CA. Default plain TCP.
	TLS *RedisTLS
}

// RedisTLS is how StartRedis serves TLS.
type RedisTLS struct {
	// CA issues the servers' certificate (valid for 127.0.0.1); clients
	// trust it with CA.Pool() or CA.CertFile.
	CA *CA
	// AuthClients makes the servers require a client certificate signed by
	// CA (tls-auth-clients yes). Default no: any TLS client is accepted.
	AuthClients bool
}

// RedisSet is a set of independent redis-server processes on loopback ports,
// each with its own temp dir. Servers are numbered from 0.
type RedisSet struct {
	dir     string
	opts    RedisOptions
	servers []*redisServer
	// cert is the servers' certificate and probe a client certificate the
	// readiness check presents; both nil without TLS.
	cert, probe *Issued
}

type redisServer struct {
	dir  string
	port int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// RedisAvailable reports whether StartRedis can run here.
func RedisAvailable() bool {
	_, err := exec.LookPath("redis-server")
	return err == nil
}

// RedisWith starts n independent servers for a test and stops them when the
// test ends. Without redis-server the test is skipped, or fails when
// LOCKD_REQUIRE_SERVERS=1 (CI).
func RedisWith(tb testing.TB, n int, opts RedisOptions) *RedisSet {
	tb.Helper()
	if !RedisAvailable() {
		Missing(tb, ErrRedisMissing.Error()+"; install it with: apt-get install -y redis-server")
	}
	r, err := StartRedis(n, opts)
	if err != nil {
		tb.Fatalf("start redis-server ×%d: %v", n, err)
	}
	tb.Cleanup(func() {
		if err := r.Close(); err != nil {
			tb.Logf("stop redis-server: %v", err)
		}
	})
	return r
}

// Redis is RedisWith with the zero options: n servers without persistence.
func Redis(tb testing.TB, n int) *RedisSet {
	tb.Helper()
	return RedisWith(tb, n, RedisOptions{})
}

// StartRedis starts n independent redis-server processes and returns once
// each accepts connections. Close stops them.
func StartRedis(n int, opts RedisOptions) (*RedisSet, error) {
	if n < 1 {
		return nil, fmt.Errorf("testserver: Redis needs at least 1 server, got %d", n)
	}
	if !RedisAvailable() {
		return nil, ErrRedisMissing
	}
	dir, err := os.MkdirTemp("", "lockd-redis-")
	if err != nil {
		return nil, err
	}
	r := &RedisSet{dir: dir, opts: opts}
	if opts.TLS != nil {
		if opts.TLS.CA == nil {
			r.Close()
			return nil, errors.New("testserver: RedisOptions.TLS needs a CA")
		}
		// Named after the set's dir: two sets may share a CA's dir.
		name := "redis-" + filepath.Base(dir)
		if r.cert, err = opts.TLS.CA.Issue(name, "redis-server", Loopback); err != nil {
			r.Close()
			return nil, err
		}
		if r.probe, err = opts.TLS.CA.Issue(name+"-probe", "testserver-probe"); err != nil {
			r.Close()
			return nil, err
		}
	}
	for i := 0; i < n; i++ {
		s := &redisServer{dir: filepath.Join(dir, strconv.Itoa(i))}
		if err := os.Mkdir(s.dir, 0o700); err != nil {
			r.Close()
			return nil, err
		}
		r.servers = append(r.servers, s)
		// A free port may be taken by someone else between the probe and
		// redis-server's bind; the server then exits at once: try another.
		for attempt := 0; ; attempt++ {
			if s.port, err = freePort(); err == nil {
				if err = s.start(r.args(s), r.ClientTLS()); err == nil {
					break
				}
			}
			if attempt == 4 {
				r.Close()
				return nil, err
			}
		}
	}
	return r, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *redisServer) addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// args is server s's command line.
func (r *RedisSet) args(s *redisServer) []string {
	args := []string{
		"--bind", "127.0.0.1",
		"--dir", s.dir,
		"--save", "",
		"--daemonize", "no",
		"--protected-mode", "no",
		"--logfile", filepath.Join(s.dir, "redis.log"),
	}
	if t := r.opts.TLS; t != nil {
		auth := "no"
		if t.AuthClients {
			auth = "yes"
		}
		args = append(args, "--port", "0", "--tls-port", strconv.Itoa(s.port),
			"--tls-cert-file", r.cert.CertFile, "--tls-key-file", r.cert.KeyFile,
			"--tls-ca-cert-file", t.CA.CertFile, "--tls-auth-clients", auth)
	} else {
		args = append(args, "--port", strconv.Itoa(s.port))
	}
	if r.opts.AOF {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		args = append(args, "--appendonly", "no")
	}
	if r.opts.Password != "" {
		args = append(args, "--requirepass", r.opts.Password)
	}
	for _, u := range r.opts.Users {
		args = append(args, "--user")
		args = append(args, strings.Fields(u)...)
	}
	return args
}

// ClientTLS is a TLS config that trusts the servers' CA and presents a
// client certificate from it; nil when the servers speak plain TCP.
func (r *RedisSet) ClientTLS() *tls.Config {
	if r.opts.TLS == nil {
		return nil
	}
	return &tls.Config{RootCAs: r.opts.TLS.CA.Pool(), Certificates: []tls.Certificate{r.probe.TLS}, MinVersion: tls.VersionTLS12}
}

func (s *redisServer) start(args []string, tlsConf *tls.Config) error {
	cmd := exec.Command("redis-server", args...)
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	deadline := time.Now().Add(redisStartTimeout)
	for {
		if err := redisProbe(s.addr(), tlsConf); err == nil {
			return nil
		}
		select {
		case <-done:
			log, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			return fmt.Errorf("testserver: redis-server on port %d exited during startup: %s", s.port, tail(log, 500))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.kill()
			return fmt.Errorf("testserver: redis-server on port %d not serving after %v", s.port, redisStartTimeout)
		}
	}
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// redisPing sends PING in RESP and waits for +PONG (a server still loading
// its AOF answers -LOADING).
func redisPing(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	return ping(c, addr, false)
}

// redisProbe is redisPing over TLS when tlsConf is set; it also takes
// -NOAUTH as ready, since a server with a password answers that.
func redisProbe(addr string, tlsConf *tls.Config) error {
	if tlsConf == nil {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		return ping(c, addr, true)
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr, tlsConf)
	if err != nil {
		return err
	}
	return ping(c, addr, true)
}

func ping(c net.Conn, addr string, noauthOK bool) error {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if got := string(buf[:n]); got != "+PONG\r\n" && !(noauthOK && strings.HasPrefix(got, "-NOAUTH")) {
		return fmt.Errorf("testserver: redis %s answered %q", addr, buf[:n])
	}
	return nil
}

func (s *redisServer) kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// Addrs returns every server's host:port, in server order.
func (r *RedisSet) Addrs() []string {
	addrs := make([]string, len(r.servers))
	for i, s := range r.servers {
		addrs[i] = s.addr()
	}
	return addrs
}

// Addr returns server i's host:port.
func (r *RedisSet) Addr(i int) string { return r.servers[i].addr() }

// Kill stops server i with SIGKILL and waits for it to exit.
func (r *RedisSet) Kill(i int) error {
	r.servers[i].kill()
	return nil
}

// Signal sends sig to server i (SIGSTOP/SIGCONT pause and resume it).
func (r *RedisSet) Signal(i int, sig syscall.Signal) error {
	s := r.servers[i]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return fmt.Errorf("testserver: redis %d not started", i)
	}
	return s.cmd.Process.Signal(sig)
}

// Restart kills server i if it runs and starts it again on the same port
// with the same dir: without AOF it comes back empty.
func (r *RedisSet) Restart(i int) error {
	s := r.servers[i]
	s.kill()
	var err error
	// The port was just freed; another process could take it, but on
	// loopback with SO_REUSEADDR (redis sets it) a rebind succeeds at once.
	for attempt := 0; attempt < 5; attempt++ {
		if err = s.start(r.args(s), r.ClientTLS()); err == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// Close kills every server and removes the temp dir.
func (r *RedisSet) Close() error {
	for _, s := range r.servers {
		s.kill()
	}
	return os.RemoveAll(r.dir)
}
