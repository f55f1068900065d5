package zk

import (
	"bufio"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/lockd/lockd/internal/httpapi"
)

// Through lockd's HTTP API on ZooKeeper: GET /v1/capabilities shows
// elections observed by watch and key events without replay, and an observe
// stream shows a campaign's term and its resign.
func TestHTTPElectionsOnZooKeeper(t *testing.T) {
	z := sharedZK(t, 1)
	ts := httptest.NewServer(httpapi.New(newBackend(t, z.Addrs(), Options{}), httpapi.Options{Backend: "zk"}))
	t.Cleanup(ts.Close)
	post := func(path, body string) map[string]any {
		t.Helper()
		resp, err := ts.Client().Post(ts.URL+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		if resp.StatusCode/100 != 2 {
			t.Fatalf("POST %s: %d %v", path, resp.StatusCode, out)
		}
		return out
	}

	resp, err := ts.Client().Get(ts.URL + "/v1/capabilities")
	if err != nil {
		t.Fatal(err)
	}
	var caps struct {
		Features struct {
			Elections map[string]any `json:"elections"`
			Events    map[string]any `json:"events"`
		} `json:"features"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&caps)
	resp.Body.Close()
	if caps.Features.Elections["observe"] != "watch" {
		t.Fatalf("zk capabilities: elections = %v, want {observe: watch}", caps.Features.Elections)
	}
	if e := caps.Features.Events; e["changes"] != "watch" || e["replay"] != false {
		t.Fatalf("zk capabilities: events = %v, want {replay: false, changes: watch}", e)
	}

	name := uniqueKey(t)
	stream, err := ts.Client().Get(ts.URL + "/v1/elections/" + name + "/observe")
	if err != nil {
		t.Fatalf("observe: %v", err)
	}
	defer stream.Body.Close()
	events := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stream.Body)
		for sc.Scan() {
			if ev, ok := strings.CutPrefix(sc.Text(), "event: "); ok {
				events <- ev
			}
		}
		close(events)
	}()
	want := func(kind string) {
		t.Helper()
		select {
		case ev := <-events:
			if ev != kind {
				t.Fatalf("event %q, want %q", ev, kind)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no %q event within 10s", kind)
		}
	}
	want("no_leader")
	lead := post("/v1/elections/"+name+"/campaign", `{"ttl_ms": 20000, "owner": "a", "value": "v"}`)
	want("leader")
	post("/v1/elections/"+name+"/resign", `{"lease_id": "`+lead["lease_id"].(string)+`"}`)
	want("no_leader")
}

// Through lockd's HTTP API on ZooKeeper: sessions are in the capabilities;
// a session's grants show its deadline, refuse a direct renew (409
// session_bound), and are freed by its close.
func TestHTTPSessionsOnZooKeeper(t *testing.T) {
	z := sharedZK(t, 1)
	ts := httptest.NewServer(httpapi.New(newBackend(t, z.Addrs(), Options{}), httpapi.Options{Backend: "zk"}))
	t.Cleanup(ts.Close)
	post := func(path, body string, want int) map[string]any {
		t.Helper()
		resp, err := ts.Client().Post(ts.URL+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		if resp.StatusCode != want {
			t.Fatalf("POST %s: %d %v, want %d", path, resp.StatusCode, out, want)
		}
		return out
	}
	get := func(path string, out any) {
		t.Helper()
		resp, err := ts.Client().Get(ts.URL + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
	}

	var caps struct {
		Features struct {
			Sessions map[string]any `json:"sessions"`
		} `json:"features"`
	}
	get("/v1/capabilities", &caps)
	if caps.Features.Sessions["expiry"] != "store" {
		t.Fatalf("zk capabilities: sessions = %v, want {expiry: store}", caps.Features.Sessions)
	}

	sess := post("/v1/sessions", `{"ttl_ms": 20000, "owner": "w"}`, 201)
	sid, _ := sess["session_id"].(string)
	a, b := uniqueKey(t)+"-a", uniqueKey(t)+"-b"
	ga := post("/v1/locks/"+a+"/acquire", `{"session_id": "`+sid+`"}`, 200)
	post("/v1/locks/"+b+"/acquire", `{"session_id": "`+sid+`"}`, 200)
	if ga["expires_at"] != sess["expires_at"] {
		t.Errorf("grant expires_at %v, want the session's %v", ga["expires_at"], sess["expires_at"])
	}
	if out := post("/v1/locks/"+a+"/renew", `{"lease_id": "`+ga["lease_id"].(string)+`"}`, 409); out["code"] != "session_bound" {
		t.Errorf("direct renew: code %v, want session_bound", out["code"])
	}
	post("/v1/sessions/close", `{"session_id": "`+sid+`"}`, 204)
	for _, k := range []string{a, b} {
		var st map[string]any
		get("/v1/locks/"+k, &st)
		if st["held"] != false {
			t.Errorf("GET /v1/locks/%s after close = %v, want not held", k, st)
		}
	}
	if out := post("/v1/sessions/renew", `{"session_id": "`+sid+`"}`, 410); out["code"] != "session_expired" {
		t.Errorf("renew after close: code %v, want session_expired", out["code"])
	}
}
