package etcd_test

import (
	"testing"
	"time"

	"github.com/lockd/lockd/backend/etcd/embedded"

	"github.com/lockd/lockd/backend"
	etcdb "github.com/lockd/lockd/backend/etcd"
)

// An observer whose watch etcd cancels as compacted (what an observer that
// fell behind sees once lockd compacts) reads the election afresh and goes
// on: it sees the next leader and its resign, and no error ends the stream.
func TestObserveWatchCompacted(t *testing.T) {
	e := startEmbedded(t, embedded.Config{})
	leader := etcdb.New(client(t, e.Endpoints()), etcdb.Options{})
	t.Cleanup(func() { leader.Close() })
	cli := client(t, e.Endpoints())
	f := &compactBehind{kv: cli.KV, cli: cli}
	f.left.Store(1)
	cli.Watcher = &laggingWatcher{Watcher: cli.Watcher, f: f}
	observer := etcdb.New(cli, etcdb.Options{})
	t.Cleanup(func() { observer.Close() })
	ctx := t.Context()

	events, err := observer.Elections().Observe(ctx, "lagging")
	if err != nil {
		t.Fatal(err)
	}
	nextEvent := func() backend.ElectionEvent {
		t.Helper()
		select {
		case ev := <-events:
			if ev.Err != nil {
				t.Fatalf("the stream ended: %v", ev.Err)
			}
			return ev
		case <-time.After(20 * time.Second):
			t.Fatal("no event within 20s")
		}
		return backend.ElectionEvent{}
	}
	if ev := nextEvent(); ev.NoLeader == nil {
		t.Fatalf("first event %+v, want no_leader", ev)
	}
	for deadline := time.Now().Add(20 * time.Second); f.done.Load() == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	f.check(t, 1)
	l, err := leader.Elections().Campaign(ctx, backend.CampaignRequest{Name: "lagging", Owner: "a", Value: "v", TTL: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(); ev.Leader == nil || ev.Leader.Term != l.Term || ev.Leader.Value != "v" {
		t.Fatalf("after the campaign: %+v, want leader term %d value v", ev, l.Term)
	}
	if err := leader.Elections().Resign(ctx, "lagging", l.LeaseID); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(); ev.NoLeader == nil || ev.NoLeader.LastTerm != l.Term || ev.NoLeader.Reason != backend.ReasonResigned {
		t.Fatalf("after the resign: %+v, want no_leader {last term %d resigned}", ev, l.Term)
	}
}
