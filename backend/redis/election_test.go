package redis

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/testserver"
)

func elect(t *testing.T, b backend.Backend, name, value string, ttl time.Duration) (backend.Elections, backend.Leadership) {
	t.Helper()
	el := b.(backend.Elector).Elections()
	l, err := el.Campaign(ctx(t), backend.CampaignRequest{Name: name, Owner: "me", Value: value, TTL: ttl})
	if err != nil {
		t.Fatalf("Campaign: %v", err)
	}
	return el, l
}

// errEvent waits for the observe stream's error event, failing on any other
// event or a silent close.
func errEvent(t *testing.T, events <-chan backend.ElectionEvent, within time.Duration) error {
	t.Helper()
	timeout := time.After(within)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("the observe channel closed without an error event")
			}
			if ev.Err != nil {
				return ev.Err
			}
			t.Fatalf("event %+v %+v, want the stream to end with an error", ev.Leader, ev.NoLeader)
		case <-timeout:
			t.Fatalf("no error event within %v", within)
		}
	}
}

// A follower that falls more than the log's cap behind (its entries were
// trimmed before it read them) ends with ErrUnavailable instead of reading
// on with a gap; so does one whose log was deleted (expired, or Redis lost
// it) and written afresh.
func TestFollowerLostEntriesIsAnError(t *testing.T) {
	srv := testserver.Redis(t, 1)
	b := newFactory(srv.Addr(0), Options{})(t).(*Backend)
	raw := goredis.NewClient(&goredis.Options{Addr: srv.Addr(0)})
	t.Cleanup(func() { _ = raw.Close() })
	for _, tc := range []struct {
		name string
		lose func(t *testing.T, el backend.Elections, name string, l backend.Leadership)
	}{
		{"trimmed", func(t *testing.T, el backend.Elections, name string, l backend.Leadership) {
			for i := range 1500 { // well past MAXLEN ~ 1000
				if _, err := el.Proclaim(ctx(t), name, l.LeaseID, fmt.Sprint(i)); err != nil {
					t.Fatalf("Proclaim: %v", err)
				}
			}
		}},
		{"deleted", func(t *testing.T, el backend.Elections, name string, l backend.Leadership) {
			if err := raw.Del(ctx(t), b.keysIn(electionNS, name)[4]).Err(); err != nil {
				t.Fatal(err)
			}
			if _, err := el.Proclaim(ctx(t), name, l.LeaseID, "after"); err != nil {
				t.Fatalf("Proclaim: %v", err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "lost-" + tc.name
			el, l := elect(t, b, name, "v", time.Minute)
			if _, err := el.Proclaim(ctx(t), name, l.LeaseID, "seen"); err != nil {
				t.Fatal(err)
			}
			f, s, err := b.follow(ctx(t), electionNS, name)
			if err != nil {
				t.Fatal(err)
			}
			if s.Value != "seen" || s.Last.N < 2 {
				t.Fatalf("state %+v, want value seen after two log entries", s)
			}
			tc.lose(t, el, name, l)
			got, err := f.next(ctx(t))
			if !errors.Is(err, backend.ErrUnavailable) {
				t.Fatalf("next after losing entries = %d entries (first %+v), %v; want ErrUnavailable", len(got), first(got), err)
			}
		})
	}
}

func first(es []logEntry) logEntry {
	if len(es) == 0 {
		return logEntry{}
	}
	return es[0]
}

// A Redis restart while observing ends the stream with ErrUnavailable, never
// a silent close and never a stream that goes on as if nothing happened:
// without persistence the leader and the log are gone; with AOF they are
// kept, and a new Observe starts from the kept leader. With go-redis's
// default retries the blocked read is retried on a new connection and meets
// an empty log: the follower notices that the log went back.
func TestObserveAcrossRedisRestart(t *testing.T) {
	for _, tc := range []struct {
		aof     bool
		retries int
	}{{false, -1}, {true, -1}, {false, 0}} {
		aof := tc.aof
		t.Run(fmt.Sprintf("aof=%v,retries=%d", tc.aof, tc.retries), func(t *testing.T) {
			srv := testserver.RedisWith(t, 1, testserver.RedisOptions{AOF: aof})
			b, err := New(t.Context(), goredis.NewClient(&goredis.Options{Addr: srv.Addr(0), MaxRetries: tc.retries}), Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = b.Close() })
			el, l := elect(t, b, "restart", "v", time.Minute)
			octx, cancel := context.WithCancel(t.Context())
			defer cancel()
			events, err := el.Observe(octx, "restart")
			if err != nil {
				t.Fatal(err)
			}
			if ev := <-events; ev.Leader == nil || ev.Leader.Term != l.Term {
				t.Fatalf("first event %+v %+v %v, want the leader", ev.Leader, ev.NoLeader, ev.Err)
			}
			if err := srv.Restart(0); err != nil {
				t.Fatalf("Restart: %v", err)
			}
			if err := errEvent(t, events, 20*time.Second); !errors.Is(err, backend.ErrUnavailable) {
				t.Fatalf("stream ended with %v, want ErrUnavailable", err)
			}
			var st backend.ElectionState
			for i := 0; i < 20; i++ { // the client's first command may meet the dead connection
				if st, err = el.Leader(ctx(t), "restart"); err == nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				t.Fatalf("Leader after the restart: %v", err)
			}
			if kept := st.Leader != nil && st.Leader.Term == l.Term; kept != aof {
				t.Fatalf("Leader after the restart = %+v, want kept=%v", st.Leader, aof)
			}
		})
	}
}
