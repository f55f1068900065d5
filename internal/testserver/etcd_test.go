package testserver

import (
	"net"
	"sync/atomic"
	"testing"
)

// A port that was free when picked and bound by someone else before the
// member bound it (as CI saw with parallel packages) costs a retry on fresh
// ports, not the test.
func TestEtcdStartsAgainWhenItsPortWasTaken(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	var calls atomic.Int32
	etcdPort = func() (int, error) {
		if calls.Add(1) == 1 {
			return taken.Addr().(*net.TCPAddr).Port, nil
		}
		return freePort()
	}
	t.Cleanup(func() { etcdPort = freePort })
	e, err := StartEtcd(1)
	if err != nil {
		t.Fatalf("start with its first port taken: %v", err)
	}
	defer e.Close()
	if calls.Load() < 4 {
		t.Fatalf("%d ports picked, want a second pair after the taken one", calls.Load())
	}
}
