package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/lockd/lockd/backend"
	etcdb "github.com/lockd/lockd/backend/etcd"
	"github.com/lockd/lockd/internal/lease"
)

// An external etcd cluster: real etcd processes (Debian's etcd-server) on
// loopback ports, so that a member kill is a real SIGKILL of a separate
// process, as opposed to the embedded cells, where the members run inside
// this process and a "kill" is an in-process stop.

// etcdBinary is the etcd server compare runs; "" when it is not installed.
func etcdBinary() string {
	if p, err := exec.LookPath("etcd"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/bin/etcd"); err == nil {
		return "/usr/bin/etcd"
	}
	return ""
}

func etcdProcMissing() string {
	if etcdBinary() == "" {
		return "etcd-server not installed"
	}
	return ""
}

type etcdProc struct {
	args    []string
	client  string
	logPath string

	mu  sync.Mutex
	cmd *exec.Cmd
}

type etcdProcs struct {
	dir     string
	bin     string
	members []*etcdProc
}

func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startEtcdProcs starts an n-member cluster and waits until every member
// answers. A port found free may be bound by another process before the
// member binds it; the cluster is then started again on fresh ports.
func startEtcdProcs(n int) (*etcdProcs, error) {
	var err error
	for attempt := 0; attempt < 4; attempt++ {
		var c *etcdProcs
		if c, err = startEtcdProcsOnce(n); err == nil || !errors.Is(err, errPortTaken) {
			return c, err
		}
	}
	return nil, err
}

// errPortTaken is a member that exited because its port was bound first.
var errPortTaken = errors.New("address already in use")

// etcdProcPort picks a free loopback port for a member; a test replaces it
// to hand out a taken one.
var etcdProcPort = freeLoopbackPort

func startEtcdProcsOnce(n int) (*etcdProcs, error) {
	bin := etcdBinary()
	if bin == "" {
		return nil, errors.New("etcd-server not installed")
	}
	dir, err := os.MkdirTemp("", "lockd-etcdproc-")
	if err != nil {
		return nil, err
	}
	c := &etcdProcs{dir: dir, bin: bin}
	var initial []string
	type ports struct{ client, peer int }
	var ps []ports
	for i := 0; i < n; i++ {
		cp, err1 := etcdProcPort()
		pp, err2 := etcdProcPort()
		if err1 != nil || err2 != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("free ports: %v %v", err1, err2)
		}
		ps = append(ps, ports{cp, pp})
		initial = append(initial, fmt.Sprintf("m%d=http://127.0.0.1:%d", i, pp))
	}
	for i, p := range ps {
		client := fmt.Sprintf("http://127.0.0.1:%d", p.client)
		peer := fmt.Sprintf("http://127.0.0.1:%d", p.peer)
		m := &etcdProc{client: fmt.Sprintf("127.0.0.1:%d", p.client), logPath: filepath.Join(dir, fmt.Sprintf("m%d.log", i)), args: []string{
			"--name", fmt.Sprint("m", i), "--data-dir", filepath.Join(dir, fmt.Sprint("m", i)),
			"--listen-client-urls", client, "--advertise-client-urls", client,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-token", filepath.Base(dir),
			"--initial-cluster-state", "new",
			// As lockd's docs ask of an external cluster it does not compact.
			"--auto-compaction-mode", "revision", "--auto-compaction-retention", "10000",
		}}
		c.members = append(c.members, m)
	}
	for i := range c.members {
		if err := c.spawn(i); err != nil {
			c.close()
			return nil, err
		}
	}
	for i := range c.members {
		if err := c.waitServing(i, 30*time.Second); err != nil {
			c.close()
			return nil, err
		}
	}
	return c, nil
}

func (c *etcdProcs) spawn(i int) error {
	m := c.members[i]
	logf, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(c.bin, m.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start etcd member %d: %w", i, err)
	}
	go func() { cmd.Wait(); logf.Close() }()
	m.mu.Lock()
	m.cmd = cmd
	m.mu.Unlock()
	return nil
}

// waitServing waits until member i answers a Status call.
func (c *etcdProcs) waitServing(i int, within time.Duration) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.members[i].client}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Status(ctx, c.members[i].client)
		cancel()
		if err == nil {
			return nil
		}
		if log, _ := os.ReadFile(c.members[i].logPath); bytes.Contains(log, []byte(errPortTaken.Error())) {
			return fmt.Errorf("etcd member %d: %w", i, errPortTaken)
		}
		if time.Now().After(deadline) {
			tail, _ := os.ReadFile(c.members[i].logPath)
			if len(tail) > 600 {
				tail = tail[len(tail)-600:]
			}
			return fmt.Errorf("etcd member %d not serving after %s: %v; log: %s", i, within, err, tail)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *etcdProcs) endpoints() []string {
	var out []string
	for _, m := range c.members {
		out = append(out, m.client)
	}
	return out
}

// kill SIGKILLs member i's process group and waits until it is gone.
func (c *etcdProcs) kill(i int) error {
	m := c.members[i]
	m.mu.Lock()
	cmd := m.cmd
	m.cmd = nil
	m.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	for j := 0; j < 100; j++ {
		if err := syscall.Kill(cmd.Process.Pid, 0); errors.Is(err, syscall.ESRCH) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// signal sends sig to member i's process group.
func (c *etcdProcs) signal(i int, sig syscall.Signal) error {
	m := c.members[i]
	m.mu.Lock()
	cmd := m.cmd
	m.mu.Unlock()
	if cmd == nil {
		return fmt.Errorf("etcd member %d is not running", i)
	}
	return syscall.Kill(-cmd.Process.Pid, sig)
}

// restart starts member i again on its data directory and ports.
func (c *etcdProcs) restart(i int) error {
	if err := c.spawn(i); err != nil {
		return err
	}
	return c.waitServing(i, 30*time.Second)
}

func (c *etcdProcs) close() error {
	for i := range c.members {
		c.kill(i)
	}
	return os.RemoveAll(c.dir)
}

func etcdProcVersion(bin string) string {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "etcd Version: "); ok {
			return "etcd " + strings.TrimSpace(v) + " (external processes)"
		}
	}
	return strings.TrimSpace(string(out))
}

func startEtcdExternal(members int) (*deployment, error) {
	e, err := startEtcdProcs(members)
	if err != nil {
		return nil, err
	}
	connect := func(addrs []string, rt *rtCounter, clk lease.Clock, heartbeat time.Duration) (backend.Backend, error) {
		cli, err := clientv3.New(clientv3.Config{Endpoints: addrs, DialTimeout: 5 * time.Second, Logger: zap.NewNop(), DialOptions: grpcCounting(rt)})
		if err != nil {
			return nil, err
		}
		return etcdBackend{Backend: etcdb.New(cli, etcdb.Options{Prefix: "/lockd-compare/", Clock: clk, ClockHeartbeat: heartbeat}), cli: cli}, nil
	}
	d := &deployment{
		Addrs:   e.endpoints(),
		Version: etcdProcVersion(e.bin),
		newBackend: func(addrs []string, rt *rtCounter) (backend.Backend, error) {
			return connect(addrs, rt, lease.Clock{}, 0)
		},
		clocked: func(addrs []string, clk lease.Clock) (backend.Backend, error) {
			return connect(addrs, nil, clk, 200*time.Millisecond)
		},
		directs:   []directLib{{Name: "concurrency.Mutex", New: newEtcdMutex}},
		kill:      e.kill,
		restart:   e.restart,
		victim:    func() int { return etcdLeader(e.endpoints()) },
		close:     e.close,
		storeSize: func() string { return etcdSize(e.endpoints()) },
		signal:    e.signal,
		rtHow:     "a gRPC client interceptor (one per unary call, one per message sent on a stream: watches, lease keep-alives)",
		notes:     []string{fmt.Sprintf("%d etcd members run as separate processes of Debian's etcd-server (%s) on loopback ports, with --auto-compaction-mode=revision --auto-compaction-retention=10000; a member kill is a real SIGKILL of its process group, and the restart reuses its data dir and ports.", members, e.bin)},
	}
	return d, nil
}
