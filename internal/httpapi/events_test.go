package httpapi_test

import (
	"context"
	"fmt"
	"io"
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

// wantKeyEvent reads the next event (pings skipped) and checks its name and
// its data against the spec's schema for it.
func (s *specServer) wantKeyEvent(events <-chan sseEvent, name string) sseEvent {
	s.t.Helper()
	ev := nextSSE(s.t, events, true)
	if ev.event != name {
		s.t.Fatalf("event %+v, want %s", ev, name)
	}
	schema := map[string]string{"snapshot": "KeySnapshot", "acquired": "KeyAcquired", "released": "KeyEnded",
		"expired": "KeyEnded", "resync": "Resync"}[name]
	if schema == "" {
		return ev
	}
	var data any = map[string]any{}
	if ev.data != nil {
		data = ev.data
	}
	if err := s.doc.Components.Schemas[schema].Value.VisitJSON(data); err != nil {
		s.t.Errorf("%s data %v does not match the spec's %s: %v", name, ev.data, schema, err)
	}
	if (ev.id == "") != (name == "resync") {
		s.t.Errorf("%s event id %q: want an id on every event but resync", name, ev.id)
	}
	return ev
}

// The key event stream over real etcd: snapshot, acquired, released, a
// short grant expiring with nobody touching the key, each with an id and
// data the spec describes; pings; and shutdown when lockd stops.
func TestLockEventsStream(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{StreamPing: 100 * time.Millisecond})
	ctx := t.Context()
	events := stream(t, observe(t, ctx, s.url+"/v1/locks/ev.k/events", nil))
	if snap := s.wantKeyEvent(events, "snapshot"); snap.data["key"] != "ev.k" || snap.data["held"] != false {
		t.Fatalf("first event %+v, want a snapshot of ev.k, not held", snap)
	}
	g := s.do("POST", "/v1/locks/ev.k/acquire", `{"ttl_ms": 30000, "owner": "a"}`)
	s.want(g, 200, "")
	if ev := s.wantKeyEvent(events, "acquired"); ev.data["token"] != g.json["token"] || ev.data["owner"] != "a" || ev.data["expires_at"] != g.json["expires_at"] {
		t.Fatalf("after the acquire: %+v, want acquired %s", ev, g.body)
	}
	if ping := nextSSE(t, events, false); ping.event != ":ping" {
		t.Fatalf("with nothing happening: %+v, want a ping", ping)
	}
	s.want(s.do("POST", "/v1/locks/ev.k/release", `{"lease_id": "`+g.json["lease_id"].(string)+`"}`), 204, "")
	if ev := s.wantKeyEvent(events, "released"); ev.data["token"] != g.json["token"] {
		t.Fatalf("after the release: %+v, want released token %v", ev, g.json["token"])
	}
	short := s.do("POST", "/v1/locks/ev.k/acquire", `{"ttl_ms": 300, "owner": "b"}`)
	s.want(short, 200, "")
	s.wantKeyEvent(events, "acquired")
	if ev := s.wantKeyEvent(events, "expired"); ev.data["token"] != short.json["token"] {
		t.Fatalf("after the short grant: %+v, want expired token %v", ev, short.json["token"])
	}
	s.api.Stopping()
	if ev := nextSSE(t, events, true); ev.event != "shutdown" {
		t.Fatalf("on stop: %+v, want shutdown", ev)
	}
}

// Last-Event-ID: a reconnect after the last event resumes with what came
// after it (here: replayed by etcd), with no snapshot; an id lockd never
// made gets resync and a fresh snapshot.
func TestLockEventsResume(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{})
	ctx, cancel := context.WithCancel(t.Context())
	events := stream(t, observe(t, ctx, s.url+"/v1/locks/ev.r/events", nil))
	snap := s.wantKeyEvent(events, "snapshot")
	cancel()
	g := s.do("POST", "/v1/locks/ev.r/acquire", `{"ttl_ms": 30000}`)
	s.want(g, 200, "")
	resumed := stream(t, observe(t, t.Context(), s.url+"/v1/locks/ev.r/events", http.Header{"Last-Event-ID": {snap.id}}))
	if ev := s.wantKeyEvent(resumed, "acquired"); ev.data["token"] != g.json["token"] {
		t.Fatalf("resumed after the snapshot: %+v, want the acquire missed meanwhile", ev)
	}
	for _, id := range []string{"nonsense", strings.Repeat("9", 200)} {
		fresh := stream(t, observe(t, t.Context(), s.url+"/v1/locks/ev.r/events", http.Header{"Last-Event-ID": {id}}))
		if ev := s.wantKeyEvent(fresh, "resync"); ev.data["reason"] != "cursor_unknown" {
			t.Errorf("resync %+v, want reason cursor_unknown", ev)
		}
		if ev := s.wantKeyEvent(fresh, "snapshot"); ev.data["held"] != true || ev.data["token"] != g.json["token"] {
			t.Fatalf("after resync: %+v, want the current holder", ev)
		}
	}
}

// --max-streams and --max-streams-per-key count key event streams and
// election observers alike; one over gets 429 too_many_streams, and a
// stream that ends makes room. The open streams are a metric.
func TestStreamLimits(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{Limits: httpapi.Limits{MaxStreams: 2, MaxStreamsPerKey: 1}})
	ctx, cancel := context.WithCancel(t.Context())
	first := stream(t, observe(t, ctx, s.url+"/v1/locks/lim.a/events", nil))
	s.wantKeyEvent(first, "snapshot")
	r := s.do("GET", "/v1/locks/lim.a/events", "")
	s.want(r, 429, "too_many_streams")
	if r.header.Get("Retry-After") == "" {
		t.Errorf("429 without Retry-After")
	}
	obs := stream(t, observe(t, t.Context(), s.url+"/v1/elections/lim.a/observe", nil)) // another namespace
	nextSSE(t, obs, true)
	s.want(s.do("GET", "/v1/locks/lim.b/events", ""), 429, "too_many_streams")
	s.want(s.do("GET", "/v1/elections/lim.c/observe", ""), 429, "too_many_streams")
	metrics := getBody(t, s.url+"/metrics")
	for _, want := range []string{`lockd_open_streams{kind="lock"} 1`, `lockd_open_streams{kind="election"} 1`, `lockd_limited_total{limit="streams"} 2`, `lockd_limited_total{limit="streams_per_key"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	cancel()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", s.url+"/v1/locks/lim.b/events", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode == 200 {
			resp.Body.Close()
			break
		}
		resp.Body.Close()
		if time.Now().After(deadline) {
			t.Fatalf("a closed stream left no room: %d", resp.StatusCode)
		}
	}
}

// Rights and prefixes: read on the key to watch it.
func TestLockEventsRights(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{Auth: authStore(t)})
	for _, c := range []struct {
		token, path string
		status      int
		code        string
	}{
		{"", "/v1/locks/a:k/events", 401, "unauthorized"},
		{tokA, "/v1/locks/b:k/events", 403, "forbidden"},
		{tokReader, "/v1/locks/b:k/events", 403, "forbidden"},
		{tokA, "/v1/locks/-k/events", 400, "invalid_key"},
	} {
		r := s.doAs(c.token, "GET", c.path, "")
		if r.status != c.status || r.json["code"] != c.code {
			t.Errorf("GET %s as %q: %d %s, want %d %s", c.path, c.token, r.status, r.body, c.status, c.code)
		}
	}
	events := stream(t, observe(t, t.Context(), s.url+"/v1/locks/a:k/events", http.Header{"Authorization": {"Bearer " + tokReader}}))
	s.wantKeyEvent(events, "snapshot")
}

// Without a Watcher the route answers 501 not_supported and capabilities
// show events null; etcd shows replay by watch.
func TestLockEventsNotSupported(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{})
	caps := s.do("GET", "/v1/capabilities", "")
	if ev, _ := caps.json["features"].(map[string]any)["events"].(map[string]any); ev["replay"] != true || ev["changes"] != "watch" {
		t.Errorf("etcd capabilities %s, want events {replay: true, changes: watch}", caps.body)
	}
	plain := struct{ backend.Backend }{etcdBackend(t)}
	ts := httptest.NewServer(httpapi.New(plain, httpapi.Options{}))
	t.Cleanup(ts.Close)
	resp, err := ts.Client().Get(ts.URL + "/v1/locks/k/events")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 501 || !strings.Contains(string(body), `"not_supported"`) {
		t.Errorf("GET events without a Watcher: %d %s, want 501 not_supported", resp.StatusCode, body)
	}
	resp, err = ts.Client().Get(ts.URL + "/v1/capabilities")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `"events":null`) {
		t.Errorf("capabilities without a Watcher: %s, want events null", body)
	}
}

// cutWatcher ends the first stream Watch opens with an error after its
// first event, as a backend does when its store goes away mid-stream.
type cutWatcher struct {
	*etcdb.Backend
	cut atomic.Bool
}

func (c *cutWatcher) Watch(ctx context.Context, key, after string) (<-chan backend.KeyEvent, error) {
	events, err := c.Backend.Watch(ctx, key, after)
	if err != nil || c.cut.Swap(true) {
		return events, err
	}
	out := make(chan backend.KeyEvent, 2)
	out <- <-events
	out <- backend.KeyEvent{Err: fmt.Errorf("%w: store gone", backend.ErrUnavailable)}
	close(out)
	return out, nil
}

// A backend stream that ends is never a silent close: lockd follows a new
// one from the last cursor sent, which etcd resumes without a gap.
func TestLockEventsGoOnWhenBackendStreamEnds(t *testing.T) {
	real := etcdBackend(t)
	ts := httptest.NewServer(httpapi.New(&cutWatcher{Backend: real}, httpapi.Options{}))
	t.Cleanup(ts.Close)
	events := stream(t, observe(t, t.Context(), ts.URL+"/v1/locks/cut.k/events", nil))
	if ev := nextSSE(t, events, true); ev.event != "snapshot" {
		t.Fatalf("first event %+v, want snapshot", ev)
	}
	g, err := real.Acquire(t.Context(), backend.AcquireRequest{Key: "cut.k", Owner: "a", TTL: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if ev := nextSSE(t, events, true); ev.event != "acquired" || ev.data["token"] != float64(g.Token) {
		t.Fatalf("after the cut and an acquire: %+v, want acquired token %d", ev, g.Token)
	}
}

func getBody(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
