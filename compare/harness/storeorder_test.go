package harness

import (
	"context"
	"slices"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/testserver"
)

func TestOutOfOrderCountsPassedOverPlaces(t *testing.T) {
	cases := []struct {
		name   string
		grants []orderedGrant
		want   int64
	}{
		{"in order", []orderedGrant{{"a", 1}, {"a", 2}, {"a", 5}}, 0},
		{"one passed over", []orderedGrant{{"a", 1}, {"a", 3}, {"a", 2}, {"a", 4}}, 1},
		{"the newest first", []orderedGrant{{"a", 4}, {"a", 1}, {"a", 2}, {"a", 3}}, 3},
		{"keys apart", []orderedGrant{{"a", 5}, {"b", 1}, {"a", 6}, {"b", 2}}, 0},
	}
	for _, tc := range cases {
		if got := outOfOrder(tc.grants); got != tc.want {
			t.Errorf("%s: got %d out of order, want %d", tc.name, got, tc.want)
		}
	}
}

func TestMonitorArgsUnquotes(t *testing.T) {
	got := monitorArgs(`"HSET" "lockd:{a b}:lock" "id" "x\"y\\z" "v" "\x01\n"` + "\r\n")
	want := []string{"HSET", "lockd:{a b}:lock", "id", `x"y\z`, "v", "\x01\n"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

// lifoRelease is a deliberately unfair Redis backend: before each release
// it moves the newest waiter to the head of the key's queue in the store, so
// the last to arrive is served first.
type lifoRelease struct {
	backend.Backend
	rc     *goredis.Client
	prefix string
}

func (l *lifoRelease) Release(ctx context.Context, key, leaseID string) error {
	q := l.prefix + "{" + key + "}:q"
	l.rc.LMove(ctx, q, q, "RIGHT", "LEFT")
	return l.Backend.Release(ctx, key, leaseID)
}

// TestStoreOrderTurnsRedOnAnUnfairRedis: the Redis probe counts no grant
// out of order on the real backend, and counts them when the queue in the
// store is served newest first; on etcd the tokens say the same of the
// real backend.
func TestStoreOrderTurnsRedOnAnUnfairRedis(t *testing.T) {
	if testing.Short() {
		t.Skip("runs over real servers; skipped with -short")
	}
	if !testserver.RedisAvailable() {
		testserver.Missing(t, "redis-server is not installed")
	}
	d, err := startRedis(1)
	if err != nil {
		t.Fatalf("start redis: %v", err)
	}
	t.Cleanup(func() { d.close() })
	rc := goredis.NewClient(&goredis.Options{Addr: d.Addrs[0]})
	t.Cleanup(func() { rc.Close() })
	run := func(t *testing.T, unfair bool) *StoreOrder {
		b, err := d.newBackend(d.Addrs, nil)
		if err != nil {
			t.Fatal(err)
		}
		if unfair {
			b = &lifoRelease{Backend: b, rc: rc, prefix: "lockd-compare:"}
		}
		r, err := startLockdAs(b, true)
		if err != nil {
			t.Fatal(err)
		}
		defer r.stop()
		probe, perr := startOrder(d)
		res, err := measureHandoff(t.Context(), func() (Locker, error) { return r.Locker(), nil }, 6, 3*time.Second, func(float64) {})
		if err != nil {
			t.Logf("handoff: %v", err)
		}
		so := storeOrderOf(d, probe, perr, res.Tokens)
		if so == nil || so.Unmeasured != "" {
			t.Fatalf("store order not measured: %+v", so)
		}
		t.Logf("unfair %v: %d of %d grants out of store order (client timestamps: %d FIFO violations)", unfair, so.OutOfOrder, so.Grants, res.FIFOViolations)
		if so.Grants < 10 {
			t.Fatalf("only %d grants seen by the probe (clients saw %d)", so.Grants, res.Grants)
		}
		return so
	}
	t.Run("fair", func(t *testing.T) {
		if so := run(t, false); so.OutOfOrder != 0 {
			t.Errorf("got %d grants out of store order on the real backend, want 0", so.OutOfOrder)
		}
	})
	t.Run("newest first", func(t *testing.T) {
		if so := run(t, true); so.OutOfOrder == 0 {
			t.Errorf("got 0 grants out of store order with the queue served newest first, want some")
		}
	})
}

func TestStoreOrderByTokenOnEtcd(t *testing.T) {
	if testing.Short() {
		t.Skip("runs over embedded etcd; skipped with -short")
	}
	d := etcdDeployment(t)
	b, err := d.newBackend(d.Addrs, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := startLockdAs(b, true)
	if err != nil {
		t.Fatal(err)
	}
	defer r.stop()
	res, _ := measureHandoff(t.Context(), func() (Locker, error) { return r.Locker(), nil }, 6, 2*time.Second, func(float64) {})
	so := storeOrderOf(d, nil, nil, res.Tokens)
	if so.Grants < 10 || so.OutOfOrder != 0 {
		t.Errorf("got %d of %d grants out of token order, want 0 of at least 10", so.OutOfOrder, so.Grants)
	}
}
