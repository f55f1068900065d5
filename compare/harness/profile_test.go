package harness

import (
	"encoding/json"
	"strings"
	"sync"
	"testing"
)

func TestChargeSampleSides(t *testing.T) {
	for _, c := range []struct {
		frames     []string
		side, part string
	}{
		{[]string{"runtime.mallocgc", "encoding/json.Marshal", "github.com/lockd/lockd/internal/httpapi.writeJSON", "net/http.(*conn).serve"}, SideLockdHTTP, "allocation, for encoding/json"},
		{[]string{"internal/runtime/syscall.Syscall6", "syscall.write", "net.(*conn).Write", "github.com/redis/go-redis/v9.(*baseClient).process", "github.com/lockd/lockd/backend/redis.(*Backend).acquire", "github.com/lockd/lockd/internal/httpapi.(*Server).acquire", "net/http.(*conn).serve"}, SideStoreClient, "syscalls, for net"},
		{[]string{"github.com/lockd/lockd/backend/zk.(*Backend).Acquire", "github.com/lockd/lockd/compare/harness.contractLocker.Acquire", "github.com/lockd/lockd/compare/harness.measureLatency"}, SideLockdBackend, "backend/zk"},
		{[]string{"net/http.(*persistConn).readLoop"}, SideCompare, "net/http"},
		{[]string{"go.etcd.io/etcd/server/v3/storage/mvcc.(*store).put", "go.etcd.io/etcd/server/v3/etcdserver.(*EtcdServer).apply"}, SideStore, "etcd/server/v3/storage/mvcc"},
		{[]string{"runtime.scanobject", "runtime.gcDrain", "runtime.gcBgMarkWorker"}, SideGC, "runtime: GC marking"},
		{[]string{"runtime.findRunnable", "runtime.schedule"}, SideRuntime, "runtime: scheduler"},
	} {
		side, part := chargeSample(c.frames)
		if side != c.side || part != c.part {
			t.Errorf("%s: charged to %q / %q, want %q / %q", c.frames[0], side, part, c.side, c.part)
		}
	}
}

// burnJSON is CPU work from this package: the compare's side.
func burnJSON(n int) {
	v := map[string][]int{"a": make([]int, 64), "b": make([]int, 64)}
	for i := 0; i < n; i++ {
		_, _ = json.Marshal(v)
	}
}

// A row's profile charges its CPU to the work that spent it: a loop of JSON
// encoding in the compare's own code shows as the compare's side, with
// encoding/json (or its allocations) on top.
func TestProfileCPUChargesTheWork(t *testing.T) {
	p := profileCPU(nil, "", func() int64 {
		var wg sync.WaitGroup
		for g := 0; g < 2; g++ {
			wg.Add(1)
			go func() { defer wg.Done(); burnJSON(30000) }()
		}
		wg.Wait()
		return 1000
	})
	if p.Unmeasured != "" || p.Samples < 10 {
		t.Fatalf("profile: %+v", p)
	}
	if p.Part(SideCompare) < p.PerCycleUS/4 {
		t.Errorf("sides %+v: want %q with a fair share", p.Sides, SideCompare)
	}
	var js float64
	for _, part := range p.Parts {
		if strings.Contains(part.Name, "encoding/json") {
			js += part.PerCycleUS
		}
	}
	// A quarter at least: under -race the detector's own work is half.
	if js < p.PerCycleUS/4 {
		t.Errorf("parts %+v: want encoding/json's work a fair share", p.Parts)
	}
	if p.PerCycleUS <= 0 {
		t.Errorf("CPU per cycle %v", p.PerCycleUS)
	}
}

func parkHere(stop chan struct{}, wg *sync.WaitGroup) { defer wg.Done(); <-stop }

// The memory account finds goroutines where they wait.
func TestMemProfileCountsWaitingGoroutines(t *testing.T) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 300; i++ {
		wg.Add(1)
		go parkHere(stop, &wg)
	}
	defer func() { close(stop); wg.Wait() }()
	m := ownMemProfile()
	if m.Goroutines < 300 || m.StackMB <= 0 || m.HeapInuseMB <= 0 {
		t.Fatalf("account %+v", m)
	}
	found := false
	for _, g := range m.Waiting {
		found = found || strings.HasSuffix(g.Where, "harness.parkHere") && g.Count >= 300
	}
	if !found {
		t.Errorf("waiting %+v: want 300 in harness.parkHere", m.Waiting)
	}
	if s := m.Summary(300); !strings.Contains(s, "300 in compare/harness.parkHere") {
		t.Errorf("summary %q does not name where they wait", s)
	}
}
