package harness

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/lockd/lockd/internal/testserver"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// TestEtcdProcsKillIsASIGKILL: the external cluster's members are separate
// processes; killing one ends its process, the other two keep serving
// writes, and the restarted member serves again.
func TestEtcdProcsKillIsASIGKILL(t *testing.T) {
	if why := etcdProcMissing(); why != "" {
		testserver.Missing(t, why)
	}
	c, err := startEtcdProcs(3)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.close() })
	victim := etcdLeader(c.endpoints())
	pid := c.members[victim].cmd.Process.Pid
	if err := c.kill(victim); err != nil {
		t.Fatalf("kill member %d: %v", victim, err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("member %d's process %d still exists after the kill (signal 0: %v)", victim, pid, err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.endpoints(), DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	// The two left elect a leader (etcd's election timeout, 1 s): a put
	// sent meanwhile may time out, so retry until one lands.
	for {
		pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := cli.Put(pctx, "k", "with a member down")
		pcancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no put succeeded within 20 s with one of three members killed: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := c.restart(victim); err != nil {
		t.Fatalf("restart member %d: %v", victim, err)
	}
	if _, err := cli.Status(ctx, c.endpoints()[victim]); err != nil {
		t.Errorf("restarted member %d: %v", victim, err)
	}
}

// A member whose port was bound by someone else between the pick and its
// own bind costs a retry on fresh ports, not the run.
func TestEtcdProcsStartAgainWhenAPortWasTaken(t *testing.T) {
	if why := etcdProcMissing(); why != "" {
		testserver.Missing(t, why)
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	var calls atomic.Int32
	etcdProcPort = func() (int, error) {
		if calls.Add(1) == 1 {
			return taken.Addr().(*net.TCPAddr).Port, nil
		}
		return freeLoopbackPort()
	}
	t.Cleanup(func() { etcdProcPort = freeLoopbackPort })
	start := time.Now()
	c, err := startEtcdProcs(1)
	if err != nil {
		t.Fatalf("start with the first port taken: %v", err)
	}
	defer c.close()
	if calls.Load() < 4 {
		t.Fatalf("%d ports picked, want a second pair after the taken one", calls.Load())
	}
	t.Logf("started in %v", time.Since(start))
}
