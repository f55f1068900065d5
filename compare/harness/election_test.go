package harness

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lockd/lockd/backend"
)

// TestElectionFailover: on the unbroken etcd backend, a SIGKILLed leader
// process is followed by the waiting candidate, with a higher term, after
// its lease runs out; lockd's observer sees no_leader first, etcd's own
// Observe never does.
func TestElectionFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts candidate processes over embedded etcd; skipped with -short")
	}
	d := etcdDeployment(t)
	res := runElection(t.Context(), d, true, true, DefaultMaxClockSkew, func(float64) {})
	if res.Unmeasured != "" {
		t.Fatalf("not measured: %s", res.Unmeasured)
	}
	if len(res.Cells) != 2 {
		t.Fatalf("%d cells, want lockd's and etcd's own", len(res.Cells))
	}
	for _, c := range res.Cells {
		t.Logf("%s: %+v", c.Via, c.Rounds)
		if !c.Pass {
			t.Errorf("%s red on the unbroken backend: %+v", c.Via, c.Checks)
		}
		for _, r := range c.Rounds {
			// The next leader cannot come before the killed one's lease
			// (TTL after its last renew) runs out; generous upper bound.
			if r.ElectedMs < ms64(electionTTL/2) || r.ElectedMs > ms64(electionTTL+15*time.Second) {
				t.Errorf("%s: next leader elected %.0f ms after the kill, want between TTL/2 and TTL + 15 s", c.Via, r.ElectedMs)
			}
			if r.ObservedMs < r.ElectedMs-50 {
				t.Errorf("%s: new leader observed at %.0f ms, before it was elected (%.0f ms)", c.Via, r.ObservedMs, r.ElectedMs)
			}
			switch c.Via {
			case ViaHTTP:
				if r.NoLeaderMs < 0 {
					t.Errorf("lockd's observer never saw no_leader")
				}
			case ViaEtcdElection:
				if r.NoLeaderMs >= 0 {
					t.Errorf("etcd's Observe reported no leader at %.0f ms; it is documented silent on deletion", r.NoLeaderMs)
				}
			}
		}
	}
}

// TestDoubleLeaderIsShownToFail: an elector that makes a candidate leader
// while another one leads turns the double-leader check red.
func TestDoubleLeaderIsShownToFail(t *testing.T) {
	if testing.Short() {
		t.Skip("starts candidate processes over embedded etcd; skipped with -short")
	}
	d := etcdDeployment(t)
	md := *d
	md.newBackend = func(addrs []string, rt *rtCounter) (backend.Backend, error) {
		b, err := d.newBackend(addrs, rt)
		if err != nil {
			return nil, err
		}
		return &twoLeaders{Backend: b, el: b.(backend.Elector).Elections(), twins: map[string]bool{}}, nil
	}
	res := runElection(t.Context(), &md, false, true, DefaultMaxClockSkew, func(float64) {})
	if res.Unmeasured != "" || len(res.Cells) != 1 {
		t.Fatalf("not measured: %q (%d cells)", res.Unmeasured, len(res.Cells))
	}
	c := res.Cells[0]
	t.Logf("rounds: %+v", c.Rounds)
	for _, ch := range c.Checks {
		if want := ch.Name != CheckDoubleLeader; ch.Pass != want && ch.Name != CheckTermOrder {
			t.Errorf("%s: pass=%v (%s), want pass=%v", ch.Name, ch.Pass, ch.Got, want)
		}
	}
	if c.Pass {
		t.Errorf("the cell is green on an elector that elects two leaders")
	}
}

// twoLeaders elects a candidate at once while the election has a leader:
// it campaigns on a twin election of the same store instead.
type twoLeaders struct {
	backend.Backend
	el    backend.Elections
	mu    sync.Mutex
	twins map[string]bool // lease id → leads the twin
}

func (m *twoLeaders) Elections() backend.Elections {
	return &twoLeadersElections{m: m, Elections: m.el}
}

type twoLeadersElections struct {
	backend.Elections
	m *twoLeaders
}

func (e *twoLeadersElections) name(name, id string) string {
	e.m.mu.Lock()
	defer e.m.mu.Unlock()
	if e.m.twins[id] {
		return name + "-twin"
	}
	return name
}

func (e *twoLeadersElections) Campaign(ctx context.Context, req backend.CampaignRequest) (backend.Leadership, error) {
	if st, err := e.Elections.Leader(ctx, req.Name); err == nil && st.Leader != nil {
		req.Name += "-twin"
		l, err := e.Elections.Campaign(ctx, req)
		if err == nil {
			e.m.mu.Lock()
			e.m.twins[l.LeaseID] = true
			e.m.mu.Unlock()
			l.Name = strings.TrimSuffix(l.Name, "-twin")
		}
		return l, err
	}
	return e.Elections.Campaign(ctx, req)
}

func (e *twoLeadersElections) Renew(ctx context.Context, name, id string, ttl time.Duration) (backend.Leadership, error) {
	return e.Elections.Renew(ctx, e.name(name, id), id, ttl)
}

func (e *twoLeadersElections) Proclaim(ctx context.Context, name, id, value string) (backend.Leadership, error) {
	return e.Elections.Proclaim(ctx, e.name(name, id), id, value)
}

func (e *twoLeadersElections) Resign(ctx context.Context, name, id string) error {
	return e.Elections.Resign(ctx, e.name(name, id), id)
}
