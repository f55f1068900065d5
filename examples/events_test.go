package examples_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/lockd/lockd/internal/lockdtest"
)

// sseFrame is one event as a plain HTTP reader sees it.
type sseFrame struct {
	id, event string
	data      map[string]any
	at        time.Time
}

// sseReader reads a text/event-stream body line by line, as curl -N prints
// it: nothing but net/http and a line scanner.
type sseReader struct {
	t      *testing.T
	frames chan sseFrame
	resp   *http.Response
}

func openEvents(t *testing.T, ctx context.Context, url, lastEventID string) *sseReader {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	if lastEventID != "" {
		req.Header.Set("Last-Event-ID", lastEventID)
	}
	var resp *http.Response
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var err error
		if resp, err = http.DefaultClient.Do(req); err != nil {
			t.Fatal(err)
		}
		// A stream whose client left frees its place (--max-streams-per-key)
		// once lockd notices.
		if resp.StatusCode != http.StatusTooManyRequests || time.Now().After(deadline) {
			break
		}
		resp.Body.Close()
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	r := &sseReader{t: t, frames: make(chan sseFrame, 64), resp: resp}
	t.Cleanup(func() { resp.Body.Close() })
	go func() {
		defer close(r.frames)
		sc := bufio.NewScanner(resp.Body)
		var f sseFrame
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "id: "):
				f.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				f.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				_ = json.Unmarshal([]byte(line[6:]), &f.data)
			case line == "" && f.event != "":
				f.at = time.Now()
				r.frames <- f
				f = sseFrame{}
			}
		}
	}()
	return r
}

func (r *sseReader) want(event string) sseFrame {
	r.t.Helper()
	select {
	case f, ok := <-r.frames:
		if !ok {
			r.t.Fatalf("the stream ended, want %s", event)
		}
		if f.event != event {
			r.t.Fatalf("event %+v, want %s", f, event)
		}
		return f
	case <-time.After(20 * time.Second):
		r.t.Fatalf("no event within 20s, want %s", event)
	}
	return sseFrame{}
}

// closed waits for the server to end the stream.
func (r *sseReader) closed() {
	r.t.Helper()
	for {
		select {
		case f, ok := <-r.frames:
			if !ok {
				return
			}
			r.t.Fatalf("event %+v after shutdown, want the end of the stream", f)
		case <-time.After(20 * time.Second):
			r.t.Fatal("the stream did not end within 20s")
		}
	}
}

func postJSON(t *testing.T, url, body string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

// Two lockd replicas over one etcd; a plain HTTP reader on one of them sees
// the key's snapshot, a grant and its release through the other, then a
// short grant expire at its deadline plus the skew after its lockd was
// SIGKILLed — nobody touching the key. It resumes with Last-Event-ID without
// a snapshot, is refused past --max-streams-per-key, and gets event:
// shutdown when its lockd stops.
func TestWatchSeesDeadHolderExpire(t *testing.T) {
	etcdAddr := freeAddr(t)
	store := lockdtest.Start(t, &lockdtest.Options{Args: []string{"--embed-etcd-client-url", "http://" + etcdAddr,
		"--embed-etcd-peer-url", "http://" + freeAddr(t), "--max-streams-per-key", "1"}})
	holder := lockdtest.Start(t, &lockdtest.Options{Args: []string{"--etcd-endpoints", etcdAddr}})
	ctx, cancel := context.WithCancel(t.Context())
	events := openEvents(t, ctx, store.URL+"/v1/locks/e2e.k/events", "")
	if f := events.want("snapshot"); f.data["held"] != false || f.id == "" {
		t.Fatalf("first event %+v, want a snapshot, not held, with an id", f)
	}

	code, g := postJSON(t, holder.URL+"/v1/locks/e2e.k/acquire", `{"ttl_ms": 30000, "owner": "a"}`)
	if code != 200 {
		t.Fatalf("acquire: %d %v", code, g)
	}
	if f := events.want("acquired"); f.data["token"] != g["token"] || f.data["owner"] != "a" {
		t.Fatalf("after the acquire: %+v, want token %v owner a", f, g["token"])
	}
	if code, _ := postJSON(t, holder.URL+"/v1/locks/e2e.k/release", `{"lease_id": "`+g["lease_id"].(string)+`"}`); code != 204 {
		t.Fatalf("release: %d", code)
	}
	released := events.want("released")
	if released.data["token"] != g["token"] {
		t.Fatalf("after the release: %+v, want token %v", released, g["token"])
	}

	// A second stream on the key is over --max-streams-per-key 1.
	resp, err := http.Get(store.URL + "/v1/locks/e2e.k/events")
	if err != nil {
		t.Fatal(err)
	}
	var p map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&p)
	resp.Body.Close()
	if resp.StatusCode != 429 || p["code"] != "too_many_streams" {
		t.Fatalf("a second stream on the key: %d %v, want 429 too_many_streams", resp.StatusCode, p)
	}
	// Away for a while: the grant made meanwhile is replayed on resume.
	cancel()
	code, doomed := postJSON(t, holder.URL+"/v1/locks/e2e.k/acquire", `{"ttl_ms": 1500, "owner": "doomed"}`)
	if code != 200 {
		t.Fatalf("acquire: %d %v", code, doomed)
	}
	expires, err := time.Parse(time.RFC3339Nano, doomed["expires_at"].(string))
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Kill(); err != nil {
		t.Fatal(err)
	}
	resumed := openEvents(t, t.Context(), store.URL+"/v1/locks/e2e.k/events", released.id)
	if f := resumed.want("acquired"); f.data["token"] != doomed["token"] {
		t.Fatalf("resumed after the release: %+v, want the grant made meanwhile (token %v), no snapshot", f, doomed["token"])
	}
	f := resumed.want("expired")
	if f.data["token"] != doomed["token"] {
		t.Fatalf("after the holder's lockd died: %+v, want expired token %v", f, doomed["token"])
	}
	if f.at.Before(expires) {
		t.Errorf("expired at %v, before the deadline %v", f.at, expires)
	}
	// Generous: the skew (1 s by default) plus scheduling on a shared machine;
	// etcd itself would drop the entry only 2-12 s after the deadline.
	if late := f.at.Sub(expires); late > 5*time.Second {
		t.Errorf("expired %v after the deadline, want about the clock skew (1 s)", late)
	}
	t.Logf("expired %v after the holder's deadline", f.at.Sub(expires))

	if err := store.Stop(); err != nil {
		t.Fatal(err)
	}
	resumed.want("shutdown")
	resumed.closed()
}

// The README's "Watching a key" snippet runs as written against a real
// lockd, and its curl -N prints the events.
func TestReadmeWatchSnippet(t *testing.T) {
	need(t, "curl")
	need(t, "sh")
	srv := lockdtest.Start(t, nil)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", readmeBlock(t, "## Watching a key"))
	cmd.Env = append(os.Environ(), "LOCKD="+srv.URL)
	out, _ := cmd.CombinedOutput() // the watch is cut by --max-time: exit 28
	t.Logf("README snippet:\n%s", out)
	for _, want := range []string{
		"event: snapshot\ndata: {\"key\":\"deploy\",\"held\":false}",
		"event: acquired\ndata: {\"token\":",
		"event: released\ndata: {\"token\":",
		"event: expired\ndata: {\"token\":",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q", want)
		}
	}
}
