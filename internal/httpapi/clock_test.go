package httpapi_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	etcdb "github.com/lockd/lockd/backend/etcd"
	"github.com/lockd/lockd/internal/httpapi"
	"github.com/lockd/lockd/internal/lease"
	"github.com/lockd/lockd/internal/testserver"
)

// Three replicas over one etcd, one of them with its clock 2 s ahead under a
// 1 s bound: that one leaves /readyz with 503 clock_skew and exports its
// offset; the other two stay ready.
func TestReadyzRefusesASkewedReplica(t *testing.T) {
	e := testserver.EtcdCluster(t, 1)
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	server := func(offset time.Duration) *specServer {
		clock := lease.SystemClock(time.Second).Shifted(offset)
		b := etcdOn(t, e.Endpoints(), etcdb.Options{OpTimeout: 2 * time.Second, Clock: clock, ClockHeartbeat: 100 * time.Millisecond})
		s := newSpecServerOver(t, e, b, httpapi.Options{Clock: clock})
		go s.api.WatchClock(ctx, 100*time.Millisecond)
		return s
	}
	good1, good2, skewed := server(0), server(0), server(2*time.Second)

	deadline := time.Now().Add(15 * time.Second)
	for {
		r := skewed.do("GET", "/readyz", "")
		if r.status == 503 {
			skewed.want(r, 503, "clock_skew")
			if d, _ := r.json["detail"].(string); !strings.Contains(d, "--max-clock-skew") {
				t.Errorf("detail %q does not name the flag to look at", d)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("skewed replica still answers /readyz %d %s", r.status, r.body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, s := range []*specServer{good1, good2} {
		s.want(s.do("GET", "/readyz", ""), 200, "")
	}
	// With one peer heard from so far the reference is the midpoint (1 s
	// behind it); with both, their clocks (2 s): either is out of bounds.
	m := string(skewed.do("GET", "/metrics", "").body)
	var off float64
	for _, l := range strings.Split(m, "\n") {
		if v, ok := strings.CutPrefix(l, "lockd_clock_offset_seconds "); ok {
			off, _ = strconv.ParseFloat(v, 64)
		}
	}
	if off < 0.9 || off > 2.1 {
		t.Errorf("lockd_clock_offset_seconds = %v on the replica 2 s ahead, want 1..2:\n%s", off, grepLines(m, "lockd_clock"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
