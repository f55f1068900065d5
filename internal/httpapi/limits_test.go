package httpapi_test

import (
	"context"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lockd/lockd/internal/httpapi"
)

// longPoll starts an acquire that waits; cancel makes its client leave.
func (s *specServer) longPoll(key string) (cancel func(), done <-chan int) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan int, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "POST", s.url+"/v1/locks/"+key+"/acquire", strings.NewReader(`{"wait_ms": 60000}`))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			ch <- -1
			return
		}
		resp.Body.Close()
		ch <- resp.StatusCode
	}()
	return cancel, ch
}

var waitersLine = regexp.MustCompile(`(?m)^lockd_waiters (\d+)$`)

// waitForWaiters waits until lockd counts n long polls.
func (s *specServer) waitForWaiters(n int) {
	s.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		resp, err := http.Get(s.url + "/metrics")
		if err == nil {
			var b strings.Builder
			buf := make([]byte, 1<<16)
			for {
				k, rerr := resp.Body.Read(buf)
				b.WriteString(string(buf[:k]))
				if rerr != nil {
					break
				}
			}
			resp.Body.Close()
			if m := waitersLine.FindStringSubmatch(b.String()); m != nil {
				last = m[1]
				if m[1] == strconv.Itoa(n) {
					return
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.t.Fatalf("lockd_waiters is %s after 20s, want %d", last, n)
}

func (s *specServer) wantRetryAfter(r reply) {
	s.t.Helper()
	if n, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || n < 1 {
		s.t.Errorf("Retry-After %q on a %d, want whole seconds ≥ 1", r.header.Get("Retry-After"), r.status)
	}
}

// Long polls are bounded per key and in all: the one over a bound gets 429
// too_many_waiters at once, an acquire that does not wait is not counted,
// and a waiter whose client leaves frees its place.
func TestWaiterLimits(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{Limits: httpapi.Limits{MaxWaiters: 3, MaxWaitersPerKey: 2}})
	for _, k := range []string{"lim.a", "lim.b", "lim.c"} {
		s.want(s.do("POST", "/v1/locks/"+k+"/acquire", `{"ttl_ms": 60000}`), 200, "")
	}
	cancelA1, doneA1 := s.longPoll("lim.a")
	defer cancelA1()
	cancelA2, _ := s.longPoll("lim.a")
	defer cancelA2()
	s.waitForWaiters(2)

	r := s.do("POST", "/v1/locks/lim.a/acquire", `{"wait_ms": 60000}`)
	s.want(r, 429, "too_many_waiters")
	s.wantRetryAfter(r)
	s.want(s.do("POST", "/v1/locks/lim.a/acquire", `{}`), 409, "lock_held")

	cancelB, _ := s.longPoll("lim.b")
	defer cancelB()
	s.waitForWaiters(3)
	s.want(s.do("POST", "/v1/locks/lim.c/acquire", `{"wait_ms": 60000}`), 429, "too_many_waiters")

	cancelA1()
	<-doneA1
	s.waitForWaiters(2)
	cancelA3, _ := s.longPoll("lim.a")
	defer cancelA3()
	s.waitForWaiters(3)
	if st := s.do("GET", "/v1/locks/lim.a", ""); st.json["waiters"] != float64(2) {
		t.Errorf("lim.a after one waiter left and another came: %s, want 2 waiters in the store", st.body)
	}
	m := s.do("GET", "/metrics", "")
	for _, want := range []string{`lockd_limited_total{limit="waiters"} 1`, `lockd_limited_total{limit="waiters_per_key"} 1`} {
		if !strings.Contains(string(m.body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// A caller with max_leases holds at most that many: the next acquire gets
// 429 too_many_leases, a renew is never refused, and a release or an expiry
// frees a place. Other callers are not affected.
func TestLeaseLimit(t *testing.T) {
	st := tokensFile(t, `{"tokens": [
	  {"name": "small", "token": "small-secret-0123456789", "prefixes": ["s:"], "rights": ["lock", "read"], "max_leases": 2},
	  {"name": "big", "token": "big-secret-0123456789", "prefixes": ["s:"], "rights": ["lock", "read"]}
	]}`)
	s := newSpecServer(t, httpapi.Options{Auth: st, Limits: httpapi.Limits{LeasesPerPrincipal: 3}})
	const small, big = "small-secret-0123456789", "big-secret-0123456789"

	a := s.doAs(small, "POST", "/v1/locks/s:1/acquire", `{"ttl_ms": 60000}`)
	s.want(a, 200, "")
	s.want(s.doAs(small, "POST", "/v1/locks/s:2/acquire", `{"ttl_ms": 400}`), 200, "")
	r := s.doAs(small, "POST", "/v1/locks/s:3/acquire", `{}`)
	s.want(r, 429, "too_many_leases")
	s.wantRetryAfter(r)
	s.want(s.doAs(small, "POST", "/v1/locks/s:1/renew", `{"lease_id": "`+a.json["lease_id"].(string)+`"}`), 200, "")

	// The server default (3) applies to a token without max_leases.
	for _, k := range []string{"s:b1", "s:b2", "s:b3"} {
		s.want(s.doAs(big, "POST", "/v1/locks/"+k+"/acquire", `{}`), 200, "")
	}
	s.want(s.doAs(big, "POST", "/v1/locks/s:b4/acquire", `{}`), 429, "too_many_leases")

	// s:2's lease (400 ms) expires; its place is free again.
	time.Sleep(500 * time.Millisecond)
	s.want(s.doAs(small, "POST", "/v1/locks/s:3/acquire", `{}`), 200, "")
	s.want(s.doAs(small, "POST", "/v1/locks/s:4/acquire", `{}`), 429, "too_many_leases")
	s.want(s.doAs(small, "POST", "/v1/locks/s:1/release", `{"lease_id": "`+a.json["lease_id"].(string)+`"}`), 204, "")
	s.want(s.doAs(small, "POST", "/v1/locks/s:4/acquire", `{}`), 200, "")
}

// A caller over its rate gets 429 rate_limited with a Retry-After; another
// caller and the health probes are not affected.
func TestRateLimit(t *testing.T) {
	st := tokensFile(t, `{"tokens": [
	  {"name": "slow", "token": "slow-secret-0123456789", "prefixes": ["r:"], "rights": ["lock", "read"], "rate_per_sec": 0.1},
	  {"name": "fast", "token": "fast-secret-0123456789", "prefixes": ["r:"], "rights": ["lock", "read"]}
	]}`)
	s := newSpecServer(t, httpapi.Options{Auth: st})
	const slow, fast = "slow-secret-0123456789", "fast-secret-0123456789"

	s.want(s.doAs(slow, "GET", "/v1/locks/r:x", ""), 200, "")
	for _, path := range []string{"/v1/locks/r:x", "/v1/locks?prefix=r:"} {
		r := s.doAs(slow, "GET", path, "")
		s.want(r, 429, "rate_limited")
		s.wantRetryAfter(r)
	}
	s.want(s.doAs(slow, "POST", "/v1/locks/r:x/acquire", `{}`), 429, "rate_limited")
	for range 20 {
		s.want(s.doAs(fast, "GET", "/v1/locks/r:x", ""), 200, "")
	}
	s.want(s.do("GET", "/healthz", ""), 200, "")
	s.want(s.do("GET", "/readyz", ""), 200, "")
}

// Grants made in a session live as long as the session: a session renew
// keeps them counted against the caller's lease limit, and closing the
// session frees their places at once.
func TestLeaseLimitCountsSessionGrants(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{Limits: httpapi.Limits{LeasesPerPrincipal: 2}})
	open := s.do("POST", "/v1/sessions", `{"ttl_ms": 2000, "owner": "w"}`)
	s.want(open, 201, "")
	sid := open.json["session_id"].(string)
	for _, k := range []string{"ls:1", "ls:2"} {
		s.want(s.do("POST", "/v1/locks/"+k+"/acquire", `{"session_id": "`+sid+`"}`), 200, "")
	}
	// Outlive the grants' first deadline by renewing the session only
	// (every 500 ms: room for a slow renew on a loaded machine).
	for range 5 {
		time.Sleep(500 * time.Millisecond)
		s.want(s.do("POST", "/v1/sessions/renew", `{"session_id": "`+sid+`"}`), 200, "")
	}
	s.want(s.do("POST", "/v1/locks/ls:3/acquire", `{}`), 429, "too_many_leases")
	s.want(s.do("POST", "/v1/sessions/close", `{"session_id": "`+sid+`"}`), 204, "")
	s.want(s.do("POST", "/v1/locks/ls:3/acquire", `{}`), 200, "")
}
