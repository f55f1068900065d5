// Package lockdtest builds the real lockd binary from this module and runs
// it as a process on free loopback ports with a temp data dir, for tests and
// programs that must talk to a real server over HTTP (clients, lockctl, the
// examples). It never mocks the server; it only starts, pauses, kills and
// restarts the real one.
package lockdtest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
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

// readyTimeout bounds a start (embedded etcd included) on a busy two-core
// machine.
const readyTimeout = 60 * time.Second

var build struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

// BuildBinary builds ./cmd/lockd once per process and returns its path. The
// binary lives in a temp dir that Main removes. When LOCKD_TEST_BINARY names
// a lockd binary (e.g. one built with -race), it is used instead.
func BuildBinary() (string, error) {
	build.once.Do(func() {
		if bin := os.Getenv("LOCKD_TEST_BINARY"); bin != "" {
			build.bin = bin
			return
		}
		gomod, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			build.err = fmt.Errorf("lockdtest: go env GOMOD: %w", err)
			return
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(strings.TrimSpace(string(gomod))), "cmd", "lockd")); err != nil {
			build.err = ErrNoLockd
			return
		}
		build.dir, build.err = os.MkdirTemp("", "lockdtest-bin-")
		if build.err != nil {
			return
		}
		build.bin = filepath.Join(build.dir, "lockd")
		cmd := exec.Command("go", "build", "-o", build.bin, "github.com/lockd/lockd/cmd/lockd")
		out, err := cmd.CombinedOutput()
		if err != nil {
			build.err = fmt.Errorf("lockdtest: go build ./cmd/lockd: %v\n%s", err, out)
		}
	})
	return build.bin, build.err
}

// ErrNoLockd is returned by BuildBinary when this checkout has no cmd/lockd.
var ErrNoLockd = errors.New("lockdtest: no cmd/lockd in this module")

// Binary is BuildBinary for tests: a build failure fails the test. A
// checkout without cmd/lockd skips the test, except when
// LOCKD_REQUIRE_SERVERS=1 (CI), where it fails.
func Binary(tb testing.TB) string {
	tb.Helper()
	bin, err := BuildBinary()
	if errors.Is(err, ErrNoLockd) && os.Getenv("LOCKD_REQUIRE_SERVERS") != "1" {
		tb.Skip(err)
	}
	if err != nil {
		tb.Fatal(err)
	}
	return bin
}

// Main runs the package's tests, then the cleanups (e.g. stopping a server
// shared by several tests), then removes the built binary. Call it from
// TestMain: func TestMain(m *testing.M) { lockdtest.Main(m) }.
func Main(m *testing.M, cleanups ...func()) {
	code := m.Run()
	for _, f := range cleanups {
		f()
	}
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
	os.Exit(code)
}

// Options configures a server. The zero value starts lockd on its default
// backend (embedded etcd) with a fresh temp data dir.
type Options struct {
	// DataDir is the --data-dir; default a new temp dir, removed on Close.
	DataDir string
	// Args are extra command-line arguments (e.g. "--auth-file", path).
	Args []string
	// Env is extra environment ("NAME=value") on top of the test's.
	Env []string
}

// Server is a running lockd process.
type Server struct {
	// URL is the API's base URL, e.g. "http://127.0.0.1:41234".
	URL string
	// Addr is the API's host:port.
	Addr    string
	DataDir string

	bin     string
	args    []string
	env     []string
	logPath string
	ownDir  string // temp dir to remove on Close, if we made it

	mu   sync.Mutex
	cmd  *exec.Cmd
	exit chan struct{} // closed when cmd has been waited for
}

// Start starts a lockd for a test and stops it in t.Cleanup. When the test
// failed, the server's log is written to the test log.
func Start(tb testing.TB, opts *Options) *Server {
	tb.Helper()
	if opts == nil {
		opts = &Options{}
	}
	s, err := StartServer(Binary(tb), *opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("lockd log (%s):\n%s", s.Addr, s.Log())
		}
		if err := s.Close(); err != nil {
			tb.Errorf("lockdtest: stopping lockd: %v", err)
		}
	})
	return s
}

// StartServer starts the lockd binary bin and waits until /readyz answers
// 200. Close stops it.
func StartServer(bin string, opts Options) (*Server, error) {
	s := &Server{bin: bin, env: opts.Env, DataDir: opts.DataDir}
	if s.DataDir == "" {
		dir, err := os.MkdirTemp("", "lockdtest-data-")
		if err != nil {
			return nil, err
		}
		s.ownDir, s.DataDir = dir, filepath.Join(dir, "data")
	}
	logDir := s.ownDir
	if logDir == "" {
		logDir = filepath.Dir(s.DataDir)
	}
	s.logPath = filepath.Join(logDir, "lockd-"+strconv.Itoa(os.Getpid())+"-"+strconv.FormatInt(time.Now().UnixNano(), 36)+".log")

	// A port picked now may be taken by someone else before lockd binds it:
	// try a few times with fresh ports.
	var err error
	for try := 0; try < 3; try++ {
		var api, etcdClient, etcdPeer int
		if api, err = freePort(); err != nil {
			break
		}
		if etcdClient, err = freePort(); err != nil {
			break
		}
		if etcdPeer, err = freePort(); err != nil {
			break
		}
		s.Addr = "127.0.0.1:" + strconv.Itoa(api)
		s.URL = "http://" + s.Addr
		s.args = []string{"--listen", s.Addr, "--data-dir", s.DataDir}
		// Only the flags this lockd has (its --help says which): the
		// embedded etcd's ports must be free ones, or parallel test
		// packages collide on the defaults.
		help := helpText(bin)
		for flag, port := range map[string]int{"--embed-etcd-client-url": etcdClient, "--embed-etcd-peer-url": etcdPeer} {
			if strings.Contains(help, strings.TrimLeft(flag, "-")) {
				s.args = append(s.args, flag, "http://127.0.0.1:"+strconv.Itoa(port))
			}
		}
		s.args = append(s.args, opts.Args...)
		if err = s.start(); err == nil {
			return s, nil
		}
	}
	s.removeOwnDir()
	return nil, err
}

func (s *Server) start() error {
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bin, s.args...)
	cmd.Env = append(os.Environ(), s.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("lockdtest: starting %s: %w", s.bin, err)
	}
	exit := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(exit)
	}()
	s.mu.Lock()
	s.cmd, s.exit = cmd, exit
	s.mu.Unlock()
	if err := s.waitReady(exit); err != nil {
		cmd.Process.Kill()
		<-exit
		return fmt.Errorf("%w\nlockd log:\n%s", err, s.Log())
	}
	return nil
}

func (s *Server) waitReady(exit <-chan struct{}) error {
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(readyTimeout)
	for time.Now().Before(deadline) {
		select {
		case <-exit:
			return errors.New("lockdtest: lockd exited before it was ready")
		default:
		}
		resp, err := hc.Get(s.URL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("lockdtest: lockd at %s not ready after %v", s.Addr, readyTimeout)
}

// Pid returns the current process id.
func (s *Server) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd.Process.Pid
}

func (s *Server) signal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd.Process.Signal(sig)
}

// Pause stops the process with SIGSTOP: connections stay open, nothing
// answers. Resume continues it.
func (s *Server) Pause() error { return s.signal(syscall.SIGSTOP) }

// Resume continues a paused process with SIGCONT.
func (s *Server) Resume() error { return s.signal(syscall.SIGCONT) }

// Kill kills the process with SIGKILL and waits for it.
func (s *Server) Kill() error {
	s.mu.Lock()
	cmd, exit := s.cmd, s.exit
	s.mu.Unlock()
	select {
	case <-exit:
		return nil
	default:
	}
	err := cmd.Process.Kill()
	<-exit
	return err
}

// Stop stops the process gracefully (SIGTERM; SIGKILL after 10 s).
func (s *Server) Stop() error {
	s.mu.Lock()
	cmd, exit := s.cmd, s.exit
	s.mu.Unlock()
	select {
	case <-exit:
		return nil
	default:
	}
	cmd.Process.Signal(syscall.SIGCONT) // a paused process cannot handle SIGTERM
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-exit:
		return nil
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-exit
		return errors.New("lockdtest: lockd ignored SIGTERM for 10 s; killed")
	}
}

// Restart starts the process again on the same ports and data dir (after
// Kill or Stop) and waits until it is ready.
func (s *Server) Restart() error {
	s.mu.Lock()
	exit := s.exit
	s.mu.Unlock()
	select {
	case <-exit:
	default:
		return errors.New("lockdtest: Restart of a running lockd")
	}
	return s.start()
}

// Close stops the process and removes the temp dir it made.
func (s *Server) Close() error {
	err := s.Stop()
	s.removeOwnDir()
	return err
}

func (s *Server) removeOwnDir() {
	if s.ownDir != "" {
		os.RemoveAll(s.ownDir)
	}
}

// Log returns what the process wrote so far (its last 16 KiB).
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.logPath)
	if len(b) > 16<<10 {
		b = append([]byte("...\n"), b[len(b)-16<<10:]...)
	}
	return string(bytes.TrimSpace(b))
}

var helps sync.Map // binary path → its --help text

// helpText returns what `bin --help` prints (stdout and stderr).
func helpText(bin string) string {
	if h, ok := helps.Load(bin); ok {
		return h.(string)
	}
	out, _ := exec.Command(bin, "--help").CombinedOutput()
	helps.Store(bin, string(out))
	return string(out)
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
