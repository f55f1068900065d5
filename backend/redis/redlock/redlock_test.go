package redlock

import (
	"context"
	"os"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/backend/backendtest"
	"github.com/lockd/lockd/internal/testserver"
)

// testOptions are the defaults but with a per-master timeout that survives a
// loaded two-core machine running -race.
var testOptions = Options{NodeTimeout: 2 * time.Second}

// newFactory returns a factory of backends (lockd replicas) over the masters
// at addrs.
func newFactory(addrs []string, opts Options) backendtest.Factory {
	return func(t *testing.T) backend.Backend {
		t.Helper()
		var clients []goredis.UniversalClient
		for _, a := range addrs {
			clients = append(clients, goredis.NewClient(&goredis.Options{Addr: a, MaxRetries: -1, DialerRetries: 1, ContextTimeoutEnabled: true}))
		}
		b, err := New(clients, opts)
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		t.Cleanup(func() { _ = b.Close() })
		return b
	}
}

// conformanceOptions declare what Redlock cannot promise, for every
// conformance run in this package.
var conformanceOptions = backendtest.Options{
	NoFIFO:           "Redlock has no queue: waiters retry with jittered back-off and whoever tries first after a release wins",
	NoWaiterCount:    "Redlock has no queue, so nothing in Redis counts waiters",
	ValidityBelowTTL: "a Redlock grant is worth TTL − elapsed − drift, and says so",
	StoreClock:       storeClock,
	NoElections:      NoElections,
	NoWatch:          NoWatch,
	NoSessions:       NoSessions,
	NoSemaphores:     "not built yet",
	NoRWLocks:        NoRWLocks,
	NoLockDelay:      backendtest.NoLockDelays("not built yet"),
}

// Redlock leaves elections and key events out on purpose, says why in the
// capabilities, and does not implement their interfaces.
func TestUnsupportedSaysWhy(t *testing.T) {
	var b any = &Backend{}
	if _, ok := b.(backend.Elector); ok {
		t.Error("Redlock implements backend.Elector, yet declares elections unsupported")
	}
	if _, ok := b.(backend.Watcher); ok {
		t.Error("Redlock implements backend.Watcher, yet declares key events unsupported")
	}
	if _, ok := b.(backend.Sessioner); ok {
		t.Error("Redlock implements backend.Sessioner, yet declares sessions unsupported")
	}
	if _, ok := b.(backend.RWLocker); ok {
		t.Error("Redlock implements backend.RWLocker, yet declares rwlocks unsupported")
	}
	u := b.(backend.Unsupported).Unsupported()
	want := map[string]string{"elections": NoElections, "events": NoWatch, "sessions": NoSessions, "rwlocks": NoRWLocks}
	if len(u) != len(want) {
		t.Errorf("Unsupported() = %v, want the reasons for %v", u, want)
	}
	for k, v := range want {
		if u[k] != v || len(v) < 40 {
			t.Errorf("Unsupported()[%q] = %q, want %q (keyed as GET /v1/capabilities names the feature)", k, u[k], v)
		}
	}
}

func TestConformance(t *testing.T) {
	srv := testserver.Redis(t, 5)
	backendtest.Run(t, newFactory(srv.Addrs(), testOptions), conformanceOptions)
}

func directClient(t *testing.T, addr string) *goredis.Client {
	t.Helper()
	c := goredis.NewClient(&goredis.Options{Addr: addr})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// quietLog drops go-redis's pool log lines: the fault tests kill masters on
// purpose and every redial would print one.
type quietLog struct{}

func (quietLog) Printf(context.Context, string, ...any) {}

func TestMain(m *testing.M) {
	goredis.SetLogger(quietLog{})
	os.Exit(m.Run())
}

// storeClock is why the clock subtests do not apply to this backend.
const storeClock = "each master expires its copy of a grant on its own clock (PEXPIRE) and lockd counts validity from its own send: no replica enforces a deadline another wrote (Redlock depends on the masters' clocks running at the same rate instead; see the README)"
