package httpapi_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lockd/lockd/backend"
	etcdb "github.com/lockd/lockd/backend/etcd"
	"github.com/lockd/lockd/internal/httpapi"
)

func TestElectionsMatchSpec(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{})
	won := s.do("POST", "/v1/elections/spec.e/campaign", `{"ttl_ms": 30000, "owner": "a", "value": "http://a:8080"}`)
	s.want(won, 200, "")
	leaseID, _ := won.json["lease_id"].(string)
	term := won.json["term"]
	if won.json["name"] != "spec.e" || won.json["value"] != "http://a:8080" || term == nil {
		t.Fatalf("campaign = %s, want name spec.e, the value and a term", won.body)
	}
	lost := s.do("POST", "/v1/elections/spec.e/campaign", `{"owner": "b", "wait_ms": 100}`)
	s.want(lost, 409, "lock_held")
	if l, _ := lost.json["leader"].(map[string]any); l["term"] != term || l["owner"] != "a" || l["value"] != "http://a:8080" {
		t.Errorf("refused campaign = %s, want the leader {term %v owner a value http://a:8080}", lost.body, term)
	}
	if _, ok := lost.json["lease_id"]; ok {
		t.Errorf("a refused campaign shows a lease id: %s", lost.body)
	}

	bad := []struct {
		method, path, body string
		status             int
		code               string
	}{
		{"POST", "/v1/elections/spec.x/campaign", `{"value": "` + strings.Repeat("v", 4097) + `"}`, 400, "invalid_value"},
		{"POST", "/v1/elections/spec.x/campaign", `{"value": 7}`, 400, "invalid_value"},
		{"POST", "/v1/elections/spec.x/campaign", `{"ttl_ms": 99}`, 400, "invalid_ttl_ms"},
		{"POST", "/v1/elections/spec.x/campaign", `{"ttl_ms": 1000, "session_id": "s"}`, 400, "invalid_session_id"},
		{"POST", "/v1/elections/spec.x/campaign", `{"session_id": "s"}`, 410, "session_expired"},
		{"POST", "/v1/elections/spec.x/campaign", `{"term": 1}`, 400, "unknown_field"},
		{"POST", "/v1/elections/-x/campaign", `{}`, 400, "invalid_key"},
		{"POST", "/v1/elections/spec.e/proclaim", `{"value": "x"}`, 400, "invalid_lease_id"},
		{"POST", "/v1/elections/spec.e/proclaim", `{"lease_id": "` + leaseID + `", "value": "` + strings.Repeat("v", 4097) + `"}`, 400, "invalid_value"},
		{"POST", "/v1/elections/spec.e/proclaim", `{"lease_id": "AAAAAAAAAAAAAAAAAAAAAA", "value": "x"}`, 410, "lease_expired"},
		{"POST", "/v1/elections/spec.other/proclaim", `{"lease_id": "` + leaseID + `", "value": "x"}`, 410, "lease_expired"},
		{"POST", "/v1/elections/spec.e/renew", `{"lease_id": "` + leaseID + `", "ttl_ms": 50}`, 400, "invalid_ttl_ms"},
		{"POST", "/v1/elections/spec.e/renew", `{"lease_id": "AAAAAAAAAAAAAAAAAAAAAA"}`, 410, "lease_expired"},
		{"POST", "/v1/elections/spec.e/resign", `{"lease_id": "AAAAAAAAAAAAAAAAAAAAAA"}`, 410, "lease_expired"},
		{"POST", "/v1/locks/spec.e/release", `{"lease_id": "` + leaseID + `"}`, 410, "lease_expired"},
		{"GET", "/v1/elections/spec!x", ``, 400, "invalid_key"},
	}
	for _, b := range bad {
		t.Run(b.code, func(t *testing.T) {
			s.t = t
			s.want(s.do(b.method, b.path, b.body), b.status, b.code)
		})
	}
	s.t = t
	// A 4 KiB value is allowed, and a lock of the same name is another thing.
	p := s.do("POST", "/v1/elections/spec.e/proclaim", `{"lease_id": "`+leaseID+`", "value": "`+strings.Repeat("é", 2048)+`"}`)
	s.want(p, 200, "")
	if p.json["term"] != term {
		t.Errorf("proclaim = %s, want term %v", p.body, term)
	}
	s.want(s.do("POST", "/v1/locks/spec.e/acquire", `{}`), 200, "")
	r := s.do("POST", "/v1/elections/spec.e/renew", `{"lease_id": "`+leaseID+`", "ttl_ms": 20000}`)
	s.want(r, 200, "")
	if r.json["term"] != term || r.json["ttl_ms"] != float64(20000) {
		t.Errorf("renew = %s, want term %v ttl_ms 20000", r.body, term)
	}
	st := s.do("GET", "/v1/elections/spec.e", "")
	s.want(st, 200, "")
	if l, _ := st.json["leader"].(map[string]any); l["term"] != term || st.json["candidates"] != float64(0) {
		t.Errorf("inspect = %s, want the leader with term %v and no candidates", st.body, term)
	}
	if strings.Contains(string(st.body), leaseID) {
		t.Errorf("inspection shows the lease id: %s", st.body)
	}
	s.want(s.do("POST", "/v1/elections/spec.e/resign", `{"lease_id": "`+leaseID+`"}`), 204, "")
	s.want(s.do("POST", "/v1/elections/spec.e/resign", `{"lease_id": "`+leaseID+`"}`), 410, "lease_expired")
	st = s.do("GET", "/v1/elections/spec.e", "")
	s.want(st, 200, "")
	if _, ok := st.json["leader"]; ok {
		t.Errorf("after the resign: %s, want no leader", st.body)
	}
	s.want(s.do("GET", "/v1/capabilities", ""), 200, "")
}

// sseEvent is one frame of an event stream.
type sseEvent struct {
	id, event string
	data      map[string]any
}

// stream reads events (and ping comments, as event ":ping") from an SSE body.
func stream(t *testing.T, resp *http.Response) <-chan sseEvent {
	t.Helper()
	out := make(chan sseEvent, 64)
	go func() {
		defer close(out)
		sc := bufio.NewScanner(resp.Body)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.event != "" {
					out <- ev
				}
				ev = sseEvent{}
			case line == ": ping":
				out <- sseEvent{event: ":ping"}
			case strings.HasPrefix(line, "id: "):
				ev.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				ev.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				_ = json.Unmarshal([]byte(line[6:]), &ev.data)
			}
		}
	}()
	return out
}

func nextSSE(t *testing.T, events <-chan sseEvent, skipPings bool) sseEvent {
	t.Helper()
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("the stream closed")
			}
			if skipPings && ev.event == ":ping" {
				continue
			}
			return ev
		case <-time.After(20 * time.Second):
			t.Fatal("no event within 20s")
		}
	}
}

func observe(t *testing.T, ctx context.Context, url string, h http.Header) *http.Response {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	for k, v := range h {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("observe: %d %q, want 200 text/event-stream", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return resp
}

// The observe stream: the current state first, each event with an id,
// pings, a resync on a Last-Event-ID it cannot resume, and shutdown when
// lockd stops.
func TestObserveStream(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{StreamPing: 100 * time.Millisecond})
	ctx := t.Context()
	events := stream(t, observe(t, ctx, s.url+"/v1/elections/obs.e/observe", nil))
	first := nextSSE(t, events, true)
	if first.event != "no_leader" || first.id == "" || first.data["last_term"] != float64(0) {
		t.Fatalf("first event %+v, want no_leader with last_term 0 and an id", first)
	}
	won := s.do("POST", "/v1/elections/obs.e/campaign", `{"ttl_ms": 30000, "owner": "a", "value": "v1"}`)
	s.want(won, 200, "")
	ev := nextSSE(t, events, true)
	if ev.event != "leader" || ev.data["term"] != won.json["term"] || ev.data["value"] != "v1" || ev.id == first.id {
		t.Fatalf("after the campaign: %+v, want leader term %v value v1 with a new id", ev, won.json["term"])
	}
	if ping := nextSSE(t, events, false); ping.event != ":ping" {
		t.Fatalf("with nothing happening: %+v, want a ping", ping)
	}
	s.want(s.do("POST", "/v1/elections/obs.e/resign", `{"lease_id": "`+won.json["lease_id"].(string)+`"}`), 204, "")
	ev = nextSSE(t, events, true)
	if ev.event != "no_leader" || ev.data["last_term"] != won.json["term"] || ev.data["reason"] != "resigned" {
		t.Fatalf("after the resign: %+v, want no_leader resigned", ev)
	}

	resumed := stream(t, observe(t, ctx, s.url+"/v1/elections/obs.e/observe", http.Header{"Last-Event-ID": {ev.id}}))
	if ev := nextSSE(t, resumed, true); ev.event != "resync" {
		t.Fatalf("a resume lockd cannot serve: %+v, want resync", ev)
	}
	if ev := nextSSE(t, resumed, true); ev.event != "no_leader" {
		t.Fatalf("after resync: %+v, want the current state (no_leader)", ev)
	}
	s.api.Stopping()
	if ev := nextSSE(t, events, true); ev.event != "shutdown" {
		t.Fatalf("on stop: %+v, want shutdown", ev)
	}
}

// Rights and prefixes apply to election names: lock to campaign, proclaim,
// renew and resign; read to inspect and observe.
func TestElectionRights(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{Auth: authStore(t)})
	b := s.doAs(tokAdmin, "POST", "/v1/elections/b:e/campaign", `{"owner": "tenant-b"}`)
	s.want(b, 200, "")
	bLease := b.json["lease_id"].(string)
	cases := []struct {
		token, method, path, body string
		status                    int
		code                      string
	}{
		{"", "POST", "/v1/elections/a:e/campaign", `{}`, 401, "unauthorized"},
		{"", "GET", "/v1/elections/a:e/observe", ``, 401, "unauthorized"},
		{tokA, "POST", "/v1/elections/b:y/campaign", `{}`, 403, "forbidden"},
		{tokA, "POST", "/v1/elections/b:e/proclaim", `{"lease_id": "` + bLease + `", "value": "x"}`, 403, "forbidden"},
		{tokA, "POST", "/v1/elections/b:e/renew", `{"lease_id": "` + bLease + `"}`, 403, "forbidden"},
		{tokA, "POST", "/v1/elections/b:e/resign", `{"lease_id": "` + bLease + `"}`, 403, "forbidden"},
		{tokA, "GET", "/v1/elections/b:e", ``, 403, "forbidden"},
		{tokA, "GET", "/v1/elections/b:e/observe", ``, 403, "forbidden"},
		{tokA, "POST", "/v1/elections/a:e/resign", `{"lease_id": "` + bLease + `"}`, 410, "lease_expired"},
		{tokReader, "POST", "/v1/elections/a:e/campaign", `{}`, 403, "forbidden"},
		{tokReader, "GET", "/v1/elections/a:e", ``, 200, ""},
		{tokA, "POST", "/v1/elections/a:e/campaign", `{}`, 200, ""},
		{tokA, "GET", "/v1/capabilities", ``, 200, ""},
	}
	for _, c := range cases {
		r := s.doAs(c.token, c.method, c.path, c.body)
		if r.status != c.status || (c.code != "" && r.json["code"] != c.code) {
			t.Errorf("%s %s as %q: %d %s, want %d %s", c.method, c.path, c.token, r.status, r.body, c.status, c.code)
		}
	}
	events := stream(t, observe(t, t.Context(), s.url+"/v1/elections/a:e/observe", http.Header{"Authorization": {"Bearer " + tokReader}}))
	if ev := nextSSE(t, events, true); ev.event != "leader" {
		t.Errorf("a reader observing a:e: %+v, want the leader", ev)
	}
	if st := s.doAs(tokAdmin, "GET", "/v1/elections/b:e", ""); st.json["leader"] == nil {
		t.Errorf("b:e after the refused calls: %s, want still led", st.body)
	}
}

// cutElections ends the first stream Observe opens with an error after its
// first event, as a backend does when its store goes away mid-stream.
type cutElections struct {
	backend.Elections
	cut atomic.Bool
}

func (c *cutElections) Observe(ctx context.Context, name string) (<-chan backend.ElectionEvent, error) {
	events, err := c.Elections.Observe(ctx, name)
	if err != nil || c.cut.Swap(true) {
		return events, err
	}
	out := make(chan backend.ElectionEvent, 2)
	out <- <-events
	out <- backend.ElectionEvent{Err: fmt.Errorf("%w: store gone", backend.ErrUnavailable)}
	close(out)
	return out, nil
}

type cutBackend struct {
	*etcdb.Backend
	el *cutElections
}

func (b cutBackend) Elections() backend.Elections { return b.el }

// A backend stream that ends is never a silent close: the HTTP stream says
// resync, then goes on with the current state and later changes.
func TestObserveResyncWhenBackendStreamEnds(t *testing.T) {
	real := etcdBackend(t)
	api := httpapi.New(cutBackend{real, &cutElections{Elections: real.Elections()}}, httpapi.Options{})
	ts := httptest.NewServer(api)
	t.Cleanup(ts.Close)
	events := stream(t, observe(t, t.Context(), ts.URL+"/v1/elections/cut.e/observe", nil))
	for i, want := range []string{"no_leader", "resync", "no_leader"} {
		if ev := nextSSE(t, events, true); ev.event != want {
			t.Fatalf("event %d: %+v, want %s", i, ev, want)
		}
	}
	if _, err := real.Elections().Campaign(t.Context(), backend.CampaignRequest{Name: "cut.e", Owner: "a", TTL: 10 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if ev := nextSSE(t, events, true); ev.event != "leader" {
		t.Fatalf("after the resync and a campaign: %+v, want leader", ev)
	}
}

// A reconnect resumes from the state its Last-Event-ID names: with the same
// leader and value nothing is repeated and the next change comes next; a
// proclaim or the leader's end made meanwhile comes as itself (nothing can
// hide between); a new term, or an id lockd does not know, gets resync and
// the current state.
func TestObserveResumesFromState(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{StreamPing: time.Hour})
	const path = "/v1/elections/obs.r/observe"
	open := func(last string) <-chan sseEvent {
		ctx, cancel := context.WithCancel(t.Context())
		t.Cleanup(cancel)
		h := http.Header{}
		if last != "" {
			h.Set("Last-Event-ID", last)
		}
		return stream(t, observe(t, ctx, s.url+path, h))
	}
	a := s.do("POST", "/v1/elections/obs.r/campaign", `{"ttl_ms": 30000, "owner": "a", "value": "v1"}`)
	s.want(a, 200, "")
	lid := a.json["lease_id"].(string)
	first := nextSSE(t, open(""), true)
	if first.event != "leader" || first.data["value"] != "v1" {
		t.Fatalf("first event %+v, want leader v1", first)
	}

	// Same state: no resync, no repeat; the next change is the next event.
	same := open(first.id)
	time.Sleep(300 * time.Millisecond) // the stream has read the state
	s.want(s.do("POST", "/v1/elections/obs.r/proclaim", `{"lease_id": "`+lid+`", "value": "v2"}`), 200, "")
	ev := nextSSE(t, same, true)
	if ev.event != "leader" || ev.data["value"] != "v2" || ev.data["term"] != a.json["term"] {
		t.Fatalf("resumed in the same state, then a proclaim: %+v, want leader v2 (no resync, no repeat of v1)", ev)
	}

	// A proclaim made while away comes as itself.
	s.want(s.do("POST", "/v1/elections/obs.r/proclaim", `{"lease_id": "`+lid+`", "value": "v3"}`), 200, "")
	if ev2 := nextSSE(t, open(ev.id), true); ev2.event != "leader" || ev2.data["value"] != "v3" {
		t.Fatalf("resumed after a proclaim made meanwhile: %+v, want leader v3 without resync", ev2)
	}
	v3 := nextSSE(t, same, true)

	// A new term meanwhile (a resign and another campaign): resync.
	s.want(s.do("POST", "/v1/elections/obs.r/resign", `{"lease_id": "`+lid+`"}`), 204, "")
	s.want(s.do("POST", "/v1/elections/obs.r/campaign", `{"ttl_ms": 30000, "owner": "b", "value": "w"}`), 200, "")
	later := open(v3.id)
	if ev := nextSSE(t, later, true); ev.event != "resync" {
		t.Fatalf("resumed after a new term: %+v, want resync", ev)
	}
	if ev := nextSSE(t, later, true); ev.event != "leader" || ev.data["owner"] != "b" {
		t.Fatalf("after the resync: %+v, want the current leader b", ev)
	}

	// An id lockd never gave: resync.
	if ev := nextSSE(t, open("0123abcd-7"), true); ev.event != "resync" {
		t.Fatalf("an unknown id: %+v, want resync", ev)
	}
}
