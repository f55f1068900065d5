package client_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/lockd/lockd/client"
	"github.com/lockd/lockd/internal/lockdtest"
)

// scraper reads lockd's /metrics on a new connection each time, so that the
// connections it opens are known: one per scrape.
type scraper struct {
	url string
	hc  *http.Client
	n   int // scrapes so far
}

func (s *scraper) metric(t *testing.T, name string) float64 {
	t.Helper()
	s.n++
	resp, err := s.hc.Get(s.url + "/metrics")
	if err != nil {
		t.Fatalf("/metrics: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` ([0-9.e+]+)$`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("/metrics has no %s", name)
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

// othersAccepted is how many connections lockd accepted besides the
// scraper's own (this scrape's included).
func (s *scraper) othersAccepted(t *testing.T) int {
	t.Helper()
	return int(s.metric(t, "lockd_connections_accepted_total")) - s.n
}

// With Options.HTTP2, 1,000 long polls wait at once over ONE connection
// (counted by the server as it accepts them), and each ends as it should:
// a poll on a key never released gets ErrHeld at the end of its wait, a poll
// on a released key is granted in its turn.
func TestHTTP2ThousandLongPollsOneConnection(t *testing.T) {
	const keys, perKey, polls = 10, 100, 1000
	srv := lockdtest.Start(t, nil)
	ctx := ctxFor(t, 5*time.Minute)
	sc := &scraper{url: srv.URL, hc: &http.Client{Timeout: time.Minute, Transport: &http.Transport{DisableKeepAlives: true}}}
	c := newClient(t, srv.URL, &client.Options{HTTP2: true})
	before := sc.othersAccepted(t) // lockdtest's own readiness probes

	// Every key is held; the even ones are released once all polls wait.
	holders := make([]client.Grant, keys)
	for i := range holders {
		g, err := c.AcquireLease(ctx, k(t, fmt.Sprintf("h2-%d", i)), client.AcquireOptions{TTL: 5 * time.Minute, Owner: "holder"})
		if err != nil {
			t.Fatal(err)
		}
		holders[i] = g
	}
	if n := sc.othersAccepted(t) - before; n != 1 {
		t.Fatalf("connections accepted for the holders' acquires: %d, want 1", n)
	}

	var (
		wg                   sync.WaitGroup
		mu                   sync.Mutex
		granted, held, wrong int
		firstWrong           error
	)
	for p := range polls {
		i := p % keys
		released := i%2 == 0
		wait := 25 * time.Second // long enough for all the polls to be queued
		if released {
			wait = 4 * time.Minute // long enough for 100 handoffs in turn
		}
		wg.Go(func() {
			key := k(t, fmt.Sprintf("h2-%d", i))
			g, err := c.AcquireLease(ctx, key, client.AcquireOptions{TTL: time.Minute, Wait: wait, Owner: "poll"})
			if err == nil {
				err = c.ReleaseLease(ctx, key, g.LeaseID)
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case released && err == nil:
				granted++
			case !released && errors.Is(err, client.ErrHeld):
				held++
			default:
				if wrong++; firstWrong == nil {
					firstWrong = fmt.Errorf("poll on %s (released %v): %v", key, released, err)
				}
			}
		})
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		w := sc.metric(t, "lockd_waiters")
		if w == polls {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lockd_waiters %v 20s after the polls were sent, want %d waiting at once", w, polls)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n := sc.othersAccepted(t) - before; n != 1 {
		t.Errorf("connections accepted with %d long polls waiting: %d, want the 1 they share", polls, n)
	}
	for i := 0; i < keys; i += 2 {
		if err := c.ReleaseLease(ctx, holders[i].Key, holders[i].LeaseID); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if granted != polls/2 || held != polls/2 || wrong != 0 {
		t.Errorf("polls: %d granted, %d held at the end of their wait, %d otherwise (first: %v); want %d, %d, 0", granted, held, wrong, firstWrong, polls/2, polls/2)
	}
	if n := sc.othersAccepted(t) - before; n != 1 {
		t.Errorf("connections accepted in all: %d, want 1", n)
	}
}

// HTTP2 changes a copy of the caller's transport, and refuses one it
// cannot change.
func TestHTTP2OptionTransport(t *testing.T) {
	own := &http.Transport{}
	if _, err := client.New("127.0.0.1:1", &client.Options{HTTP2: true, HTTPClient: &http.Client{Transport: own}}); err != nil {
		t.Fatal(err)
	}
	if own.Protocols != nil {
		t.Errorf("the caller's transport was changed: Protocols %v", own.Protocols)
	}
	odd := &http.Client{Transport: roundTripFunc(func(*http.Request) (*http.Response, error) { return nil, errors.New("unused") })}
	if _, err := client.New("127.0.0.1:1", &client.Options{HTTP2: true, HTTPClient: odd}); err == nil {
		t.Error("HTTP2 with a transport that is not an *http.Transport: no error")
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
