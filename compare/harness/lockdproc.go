package harness

// lockd as a process of its own, for the scale scenario's waiter steps: its
// resident memory is then lockd's alone (the clients' goroutines and
// sockets stay in this process). The process is this same executable (compare
// or a test binary) re-executed with lockdChildEnv set to the target's name:
// it connects lockd's backend to the store, serves lockd's HTTP API with
// HTTP/1.1 and h2c on a loopback port, prints the URL and serves until its
// stdin closes.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/lockd/lockd/internal/httpapi"
)

const lockdChildEnv = "LOCKD_COMPARE_LOCKD_CHILD"

func init() {
	if name := os.Getenv(lockdChildEnv); name != "" {
		os.Exit(lockdChild(name, strings.Split(os.Getenv("LOCKD_COMPARE_LOCKD_ADDRS"), ","), os.Stdin, os.Stdout))
	}
}

// lockdChildStreams is the HTTP/2 stream limit of the lockd process: far
// above the polls one client connection carries in the scale steps (cmd/lockd's
// --http2-max-streams defaults to 10,000).
const lockdChildStreams = 100000

func lockdChild(name string, addrs []string, stdin io.Reader, stdout io.Writer) int {
	raiseFileLimit()
	b, err := connectByName(name, addrs)
	if err != nil {
		fmt.Fprintf(stdout, "error %v\n", err)
		return 1
	}
	defer b.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintf(stdout, "error %v\n", err)
		return 1
	}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	api := httpapi.New(b, httpapi.Options{Backend: name, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	srv := &http.Server{Handler: serveMemDebug(api), ReadHeaderTimeout: 5 * time.Second, Protocols: &p,
		HTTP2: &http.HTTP2Config{MaxConcurrentStreams: lockdChildStreams}}
	go srv.Serve(ln)
	fmt.Fprintf(stdout, "lockd http://%s\n", ln.Addr())
	_, _ = io.Copy(io.Discard, stdin)
	api.Stopping()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(ctx)
	return 0
}

func raiseFileLimit() {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && rl.Cur < rl.Max {
		rl.Cur = rl.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
}

// lockdProc is a running lockd process.
type lockdProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	url   string
	done  chan struct{}
}

func startLockdProc(name string, addrs []string) (*lockdProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), lockdChildEnv+"="+name, "LOCKD_COMPARE_LOCKD_ADDRS="+strings.Join(addrs, ","))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &lockdProc{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	first := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			first <- sc.Text()
		}
		close(first)
		_, _ = io.Copy(io.Discard, out)
	}()
	select {
	case line := <-first:
		if u, ok := strings.CutPrefix(line, "lockd "); ok {
			p.url = u
			return p, nil
		}
		p.stop()
		return nil, fmt.Errorf("lockd process: %q", line)
	case <-time.After(30 * time.Second):
		p.stop()
		return nil, fmt.Errorf("lockd process did not start in 30 s")
	}
}

func (p *lockdProc) pid() int { return p.cmd.Process.Pid }

// rssMB is the process's resident memory (VmRSS).
func (p *lockdProc) rssMB() (float64, error) {
	kb, err := vmRSS(p.pid())
	return float64(kb) / 1024, err
}

// sockets counts the process's open sockets: its client connections and
// its connections to the store.
func (p *lockdProc) sockets() int {
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.pid()))
	n := 0
	for _, fd := range fds {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", p.pid(), fd.Name())); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}

// stop closes the process's stdin (it shuts down) and kills it if it has
// not gone in 5 s.
func (p *lockdProc) stop() {
	p.stdin.Close()
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// newH2Locker is an httpLocker whose requests go over HTTP/2 only (h2c with
// prior knowledge), as the Go client's Options.HTTP2 sets up its transport:
// all its concurrent calls share one connection.
func newH2Locker(base string) *httpLocker {
	h := newHTTPLocker(base)
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	h.hc.Transport.(*http.Transport).Protocols = &p
	return h
}
