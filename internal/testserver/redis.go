package testserver

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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
}

// RedisSet is a set of independent redis-server processes on loopback ports,
// each with its own temp dir. Servers are numbered from 0.
type RedisSet struct {
	dir     string
	opts    RedisOptions
	servers []*redisServer
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
		if os.Getenv("LOCKD_REQUIRE_SERVERS") == "1" {
			tb.Fatalf("%v (LOCKD_REQUIRE_SERVERS=1); install it with: apt-get install -y redis-server", ErrRedisMissing)
		}
		tb.Skipf("%v; install it with: apt-get install -y redis-server", ErrRedisMissing)
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
				if err = s.start(opts); err == nil {
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

func (s *redisServer) start(opts RedisOptions) error {
	args := []string{
		"--bind", "127.0.0.1",
		"--port", strconv.Itoa(s.port),
		"--dir", s.dir,
		"--save", "",
		"--daemonize", "no",
		"--protected-mode", "no",
		"--logfile", filepath.Join(s.dir, "redis.log"),
	}
	if opts.AOF {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		args = append(args, "--appendonly", "no")
	}
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
		if err := redisPing(s.addr()); err == nil {
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
	if string(buf[:n]) != "+PONG\r\n" {
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
		if err = s.start(r.opts); err == nil {
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
