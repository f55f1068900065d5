package redis

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
	"github.com/lockd/lockd/internal/testserver"
)

// scriptCalls is how many scripts Redis ran (EVALSHA and EVAL) since its
// statistics were last reset.
func scriptCalls(t testing.TB, c *goredis.Client) int {
	t.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatalf("INFO commandstats: %v", err)
	}
	n := 0
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || (name != "cmdstat_evalsha" && name != "cmdstat_eval") {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
		v, err := strconv.Atoi(calls)
		if err != nil {
			t.Fatalf("INFO line %q: %v", line, err)
		}
		n += v
	}
	return n
}

// waitAll starts n waiters on key through the replicas in turn and waits
// until Redis has queued all of them. The waiters give up when the test ends.
func waitAll(t *testing.T, replicas []backend.Backend, key string, n int) {
	t.Helper()
	c, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = replicas[i%len(replicas)].Acquire(c, backend.AcquireRequest{Key: key, Owner: fmt.Sprint("w", i), TTL: time.Minute, Wait: time.Minute})
		}()
	}
	waitWaiters(t, replicas[0], key, n)
}

// Queued waiters cost Redis a few script runs per heartbeat period and key
// (one per replica with waiters there), not one per waiter: 200 waiters on
// one key over two replicas for 3 s (3 heartbeat periods) make Redis run a
// handful of scripts, where one re-run of the acquire script per waiter and
// period would be 600. Meanwhile a single try on an idle key is answered
// at once and costs one script.
func TestWaitersBeatPerKeyNotPerWaiter(t *testing.T) {
	srv := testserver.Redis(t, 1)
	f := newFactory(srv.Addr(0), Options{HeartbeatTimeout: 3 * time.Second})
	replicas := []backend.Backend{f(t), f(t)}
	key := "many-waiters"
	if _, err := replicas[0].Acquire(ctx(t), backend.AcquireRequest{Key: key, Owner: "holder", TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	const waiters = 200
	waitAll(t, replicas, key, waiters)

	raw := goredis.NewClient(&goredis.Options{Addr: srv.Addr(0)})
	t.Cleanup(func() { _ = raw.Close() })
	if err := raw.ConfigResetStat(ctx(t)).Err(); err != nil {
		t.Fatal(err)
	}
	const tries = 30
	for i := range tries {
		g, err := replicas[i%2].Acquire(ctx(t), backend.AcquireRequest{Key: fmt.Sprint("idle-", i), Owner: "single", TTL: time.Minute})
		if err != nil {
			t.Fatalf("single try on an idle key while %d wait: %v", waiters, err)
		}
		if err := replicas[i%2].Release(ctx(t), g.Key, g.LeaseID); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	calls := scriptCalls(t, raw) - 2*tries // the tries' acquires and releases
	// 3 periods x 2 replicas = 6 beats; a generous bound, far below 600.
	if calls > 40 {
		t.Errorf("Redis ran %d scripts for %d waiters on one key in about 3 heartbeat periods, want a few per period (at most 40), not one per waiter", calls, waiters)
	}
	t.Logf("scripts run for %d waiters over 3 s: %d", waiters, calls)
	st, err := replicas[1].Inspect(ctx(t), key)
	if err != nil || st.Waiters != waiters {
		t.Errorf("after 3 s: Inspect = %+v, %v; want all %d waiters still queued", st, err, waiters)
	}
}

// queueKind is one kind of queue (lock, semaphore, read-write lock) as the
// heartbeat tests drive it.
type queueKind struct {
	name string
	// hold takes key for a minute and returns its release.
	hold func(t *testing.T, b *Backend, key string) (release func() error)
	// queueDead is a dead lockd's only act: one acquire script run that
	// queued waiter on key through raw.
	queueDead func(c context.Context, b *Backend, raw *goredis.Client, key, waiter string) error
	// wait waits for key (up to 15 s) and returns the acquire's error.
	wait func(c context.Context, b *Backend, key string) error
	// waiters is how many wait on key, as Inspect counts them.
	waiters func(t *testing.T, b *Backend, key string) int
	// keys are key's Redis keys; the first holds the grants.
	keys func(b *Backend, key string) []string
}

var queueKinds = []queueKind{
	{
		name: "lock",
		hold: func(t *testing.T, b *Backend, key string) func() error {
			g, err := b.Acquire(ctx(t), backend.AcquireRequest{Key: key, Owner: "holder", TTL: time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			return func() error { return b.Release(ctx(t), key, g.LeaseID) }
		},
		queueDead: func(c context.Context, b *Backend, raw *goredis.Client, key, waiter string) error {
			return acquireScript.Run(c, raw, b.keys(key), lease.NewID(), "dead", 60000, waiter, b.beat.Milliseconds()).Err()
		},
		wait: func(c context.Context, b *Backend, key string) error {
			_, err := b.Acquire(c, backend.AcquireRequest{Key: key, Owner: "live", TTL: time.Minute, Wait: 15 * time.Second})
			return err
		},
		waiters: func(t *testing.T, b *Backend, key string) int {
			st, err := b.Inspect(ctx(t), key)
			if err != nil {
				t.Fatal(err)
			}
			return st.Waiters
		},
		keys: func(b *Backend, key string) []string { return b.keys(key) },
	},
	{
		name: "semaphore",
		hold: func(t *testing.T, b *Backend, key string) func() error {
			p, err := b.Semaphores().Acquire(ctx(t), backend.SemaphoreRequest{Key: key, Permits: 1, Owner: "holder", TTL: time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			return func() error { return b.Semaphores().Release(ctx(t), key, p.LeaseID) }
		},
		queueDead: func(c context.Context, b *Backend, raw *goredis.Client, key, waiter string) error {
			return semAcquireScript.Run(c, raw, b.semKeys(key), lease.NewID(), "dead", 60000, waiter, b.beat.Milliseconds(), 1, b.channel, 0).Err()
		},
		wait: func(c context.Context, b *Backend, key string) error {
			_, err := b.Semaphores().Acquire(c, backend.SemaphoreRequest{Key: key, Permits: 1, Owner: "live", TTL: time.Minute, Wait: 15 * time.Second})
			return err
		},
		waiters: func(t *testing.T, b *Backend, key string) int {
			st, err := b.Semaphores().Inspect(ctx(t), key)
			if err != nil {
				t.Fatal(err)
			}
			return st.Waiters
		},
		keys: func(b *Backend, key string) []string { return b.semKeys(key) },
	},
	{
		name: "rwlock",
		hold: func(t *testing.T, b *Backend, key string) func() error {
			g, err := b.RWLocks().Acquire(ctx(t), backend.RWAcquireRequest{Mode: backend.ModeWrite, AcquireRequest: backend.AcquireRequest{Key: key, Owner: "holder", TTL: time.Minute}})
			if err != nil {
				t.Fatal(err)
			}
			return func() error { return b.RWLocks().Release(ctx(t), key, g.LeaseID) }
		},
		queueDead: func(c context.Context, b *Backend, raw *goredis.Client, key, waiter string) error {
			return rwAcquireScript.Run(c, raw, b.rwKeys(key), lease.NewID(), "dead", 60000, waiter, b.beat.Milliseconds(), "w", 0).Err()
		},
		wait: func(c context.Context, b *Backend, key string) error {
			_, err := b.RWLocks().Acquire(c, backend.RWAcquireRequest{Mode: backend.ModeWrite, AcquireRequest: backend.AcquireRequest{Key: key, Owner: "live", TTL: time.Minute, Wait: 15 * time.Second}})
			return err
		},
		waiters: func(t *testing.T, b *Backend, key string) int {
			st, err := b.RWLocks().Inspect(ctx(t), key)
			if err != nil {
				t.Fatal(err)
			}
			return st.WaitingReaders + st.WaitingWriters
		},
		keys: func(b *Backend, key string) []string { return b.rwKeys(key) },
	},
}

func (k queueKind) waitFor(t *testing.T, b *Backend, key string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for k.waiters(t, b, key) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%s %q: %d waiters, want %d", k.name, key, k.waiters(t, b, key), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A lockd that queued a waiter and died never beats nor leaves. Once it is
// at the head and its heartbeat lapsed, the beat of another replica with a
// waiter on the key drops it and wakes that waiter: granted within about a
// HeartbeatTimeout of the release, not stuck until its own wait ends.
func TestDeadHeadDroppedNextReplicaGranted(t *testing.T) {
	srv := testserver.Redis(t, 1)
	const beat = 600 * time.Millisecond
	f := newFactory(srv.Addr(0), Options{HeartbeatTimeout: beat})
	raw := goredis.NewClient(&goredis.Options{Addr: srv.Addr(0)})
	t.Cleanup(func() { _ = raw.Close() })
	for _, k := range queueKinds {
		t.Run(k.name, func(t *testing.T) {
			holder, live := f(t).(*Backend), f(t).(*Backend)
			key := "dead-head-" + k.name
			release := k.hold(t, holder, key)
			if err := k.queueDead(ctx(t), holder, raw, key, "dead-waiter-id"); err != nil {
				t.Fatalf("queue the dead waiter: %v", err)
			}
			done := make(chan error, 1)
			go func() { done <- k.wait(ctx(t), live, key) }()
			k.waitFor(t, holder, key, 2)
			released := time.Now()
			if err := release(); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatalf("live waiter behind a dead head: %v", err)
			}
			if took := time.Since(released); took > beat+2*time.Second {
				t.Errorf("live waiter granted %v after the release, want within about %v (the dead head's heartbeat timeout and one beat)", took, beat+beat/3)
			}
		})
	}
}

// A wake-up can be lost (here: the grant vanishes without any script
// publishing, as when a pub/sub message is lost to a reconnect). The
// replica's next beat sees the head waiter's key free and wakes it, long
// before the holder's deadline (a minute) or the waiter's give-up (15 s).
func TestLostWakeUpMadeUpByBeat(t *testing.T) {
	grantedAfterBeats(t, "lost-wake-", "waiter whose wake-up was lost", "after its key was freed silently",
		func(k queueKind, b *Backend, key string) []string { return k.keys(b, key)[:1] })
}

// A Redis that forgot its queues (restarted empty, or flushed) forgets the
// waiters' places. The beat answers that they are no longer queued; they
// re-run their acquire, which queues them again (or grants: the key is
// free now), instead of waiting out their wait unqueued.
func TestForgottenWaitersQueueAgain(t *testing.T) {
	grantedAfterBeats(t, "forgotten-", "waiter whose queue was forgotten", "after Redis forgot the key",
		func(k queueKind, b *Backend, key string) []string { return k.keys(b, key) })
}

// grantedAfterBeats holds a key of every queue kind, queues a waiter on
// another replica, deletes the Redis keys drop names behind the scripts'
// backs, and wants the waiter granted within a few beats.
func grantedAfterBeats(t *testing.T, prefix, who, after string, drop func(k queueKind, b *Backend, key string) []string) {
	srv := testserver.Redis(t, 1)
	const beat = 600 * time.Millisecond
	f := newFactory(srv.Addr(0), Options{HeartbeatTimeout: beat})
	raw := goredis.NewClient(&goredis.Options{Addr: srv.Addr(0)})
	t.Cleanup(func() { _ = raw.Close() })
	for _, k := range queueKinds {
		t.Run(k.name, func(t *testing.T) {
			holder, live := f(t).(*Backend), f(t).(*Backend)
			key := prefix + k.name
			k.hold(t, holder, key)
			done := make(chan error, 1)
			go func() { done <- k.wait(ctx(t), live, key) }()
			k.waitFor(t, holder, key, 1)
			dropped := time.Now()
			if err := raw.Del(ctx(t), drop(k, holder, key)...).Err(); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatalf("%s: %v", who, err)
			}
			if took := time.Since(dropped); took > 5*time.Second {
				t.Errorf("waiter granted %v %s, want within a few beats (%v each)", took, after, beat/3)
			}
		})
	}
}

// A beat that fails (here: Redis paused for longer than a beat's period)
// must not wake every waiter: a herd of acquires at a Redis that is behind
// keeps it behind (issue 15's compare run: a lockd whose beats timed out
// under load re-ran all 10,000 waiters' acquires, over and over). After the
// pause the waiters keep their places, and Redis runs a few scripts, not
// one per waiter.
func TestFailedBeatWakesNoHerd(t *testing.T) {
	srv := testserver.Redis(t, 1)
	const beat = 3 * time.Second // beats every second
	// A read timeout longer than the pause: only the beat's own deadline
	// (its period, before this fix) could end it.
	c := goredis.NewClient(&goredis.Options{Addr: srv.Addr(0), MaxRetries: -1, ContextTimeoutEnabled: true, ReadTimeout: 10 * time.Second})
	b, err := New(ctx(t), c, Options{HeartbeatTimeout: beat})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	key := "paused-beat"
	if _, err := b.Acquire(ctx(t), backend.AcquireRequest{Key: key, Owner: "holder", TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	const waiters = 200
	waitAll(t, []backend.Backend{b}, key, waiters)
	raw := goredis.NewClient(&goredis.Options{Addr: srv.Addr(0)})
	t.Cleanup(func() { _ = raw.Close() })
	if err := raw.ConfigResetStat(ctx(t)).Err(); err != nil {
		t.Fatal(err)
	}
	// More than two beat periods (a beat starts in the first and waits a
	// whole period), less than the heartbeat timeout.
	if err := srv.Signal(0, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2500 * time.Millisecond)
	if err := srv.Signal(0, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	if calls := scriptCalls(t, raw); calls > 20 {
		t.Errorf("Redis ran %d scripts in the 5.5 s around a 2.5 s pause with %d waiters, want a few beats (at most 20), not a re-run per waiter", calls, waiters)
	}
	waitWaiters(t, b, key, waiters)
}

// A holder that keeps renewing a short lease does not make every waiter
// re-run the acquire script at each deadline it saw: only the head of the
// line needs to look when the holder's lease may have run out (it is the
// only one that could take the lock); the others wait to be woken. 200
// waiters behind a holder renewing a 300 ms lease for 3 s.
func TestRenewingHolderWakesOnlyTheHead(t *testing.T) {
	srv := testserver.Redis(t, 1)
	f := newFactory(srv.Addr(0), Options{HeartbeatTimeout: 3 * time.Second})
	replicas := []backend.Backend{f(t), f(t)}
	key := "renewing-holder"
	const ttl = 300 * time.Millisecond
	g, err := replicas[0].Acquire(ctx(t), backend.AcquireRequest{Key: key, Owner: "holder", TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	renewed := make(chan error, 1)
	go func() {
		tick := time.NewTicker(ttl / 3)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				renewed <- nil
				return
			case <-tick.C:
				if _, err := replicas[0].Renew(context.Background(), key, g.LeaseID, 0); err != nil {
					renewed <- err
					return
				}
			}
		}
	}()
	const waiters = 200
	waitAll(t, replicas, key, waiters)
	raw := goredis.NewClient(&goredis.Options{Addr: srv.Addr(0)})
	t.Cleanup(func() { _ = raw.Close() })
	if err := raw.ConfigResetStat(ctx(t)).Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	calls := scriptCalls(t, raw)
	close(stop)
	if err := <-renewed; err != nil {
		t.Fatalf("holder's renew: %v", err)
	}
	// 3 s: ~30 renews, ~10 deadlines seen by the head, ~6 beats; one re-run
	// per waiter and deadline would be about 2,000.
	if calls > 150 {
		t.Errorf("Redis ran %d scripts in 3 s for %d waiters behind a holder renewing a %v lease, want the renews, the beats and the head's looks (at most 150), not one per waiter and deadline", calls, waiters, ttl)
	}
	t.Logf("scripts in 3 s: %d", calls)
}

// A waiter that was not at the head when it last looked, and became the
// head when the waiter before it was granted, is granted when that grant's
// lease runs out, not up to a heartbeat period later: its replica's beat
// wakes it shortly before the deadline, it looks, finds itself at the head
// and sets its timer. Three rounds, each: a holder on replica 0, a first
// waiter on replica 0 that takes the lock at the release and then never
// releases it (a 2 s lease), and a second waiter on replica 1.
func TestNewHeadGrantedAtTheDeadline(t *testing.T) {
	srv := testserver.Redis(t, 1)
	f := newFactory(srv.Addr(0), Options{HeartbeatTimeout: 3 * time.Second})
	replicas := []backend.Backend{f(t), f(t)}
	const ttl = 2 * time.Second
	var worst time.Duration
	for round := range 3 {
		key := fmt.Sprint("new-head-", round)
		g0, err := replicas[0].Acquire(ctx(t), backend.AcquireRequest{Key: key, Owner: "holder", TTL: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		first := make(chan backend.Grant, 1)
		go func() {
			g, err := replicas[0].Acquire(ctx(t), backend.AcquireRequest{Key: key, Owner: "first", TTL: ttl, Wait: time.Minute})
			if err != nil {
				t.Errorf("first waiter: %v", err)
			}
			first <- g
		}()
		waitWaiters(t, replicas[0], key, 1)
		second := make(chan time.Time, 1)
		go func() {
			_, err := replicas[1].Acquire(ctx(t), backend.AcquireRequest{Key: key, Owner: "second", TTL: time.Minute, Wait: time.Minute})
			if err != nil {
				t.Errorf("second waiter: %v", err)
			}
			second <- time.Now()
		}()
		waitWaiters(t, replicas[0], key, 2)
		if err := replicas[0].Release(ctx(t), key, g0.LeaseID); err != nil {
			t.Fatal(err)
		}
		g1 := <-first
		at := <-second
		late := at.Sub(g1.ExpiresAt)
		t.Logf("round %d: second waiter granted %v after the first's deadline", round, late)
		if late < -50*time.Millisecond {
			t.Fatalf("round %d: second waiter granted %v before the first's deadline", round, -late)
		}
		worst = max(worst, late)
	}
	// A beat period is 1 s: waking only at the first beat after the
	// deadline would be late by up to that, uniformly.
	if worst > 400*time.Millisecond {
		t.Errorf("the new head was granted up to %v after its predecessor's deadline, want at the deadline (within 400ms)", worst)
	}
}
