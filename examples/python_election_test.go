package examples_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/lockd/lockd/client"
	"github.com/lockd/lockd/internal/lockdtest"
)

// The Python example campaigns, proclaims in the same term, observes the
// current leader (itself, with the proclaimed value), resigns, observes
// no_leader on the same stream, and leaves the election without a leader.
func TestPythonElection(t *testing.T) {
	need(t, "python3")
	srv := lockdtest.Start(t, nil)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "python3", "python/lockd_example.py", "elect", "py-elect", "http://py:1")
	cmd.Env = append(os.Environ(), "LOCKD_ADDR="+srv.Addr)
	out, err := cmd.CombinedOutput()
	t.Logf("python:\n%s", out)
	if err != nil {
		t.Fatalf("python elect: %v", err)
	}
	_, rest, ok := strings.Cut(string(out), "leader of py-elect term=")
	if !ok {
		t.Fatal("output lacks the term")
	}
	term := strings.Fields(rest)[0]
	for _, want := range []string{
		"proclaimed http://py:1/v2 term=" + term,
		`observed leader {"expires_at": "20`,
		`"owner": "lockd_example.py", "term": ` + term + `, "value": "http://py:1/v2"}`,
		`observed no_leader {"last_term": ` + term + `, "reason": "resigned"}`,
		"resigned py-elect",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	resp, err := http.Get(srv.URL + "/v1/elections/py-elect")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&st)
	if st["leader"] != nil {
		t.Errorf("after the example: %v, want nobody leading", st)
	}
}

// Python's observe, cut by a real TCP proxy, reconnects with Last-Event-ID
// and gets resync and then the leader elected during the cut.
func TestPythonObserveReconnects(t *testing.T) {
	need(t, "python3")
	srv := lockdtest.Start(t, nil)
	proxy := toxiproxy.NewProxy(toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop()), "lockd-cut", "127.0.0.1:0", srv.Addr)
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Stop)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	script := `import sys; sys.path.insert(0, "python"); import lockd_example as m, json
for ev in m.Client(sys.argv[1]).observe(sys.argv[2]):
    print(ev["event"], json.dumps(ev["data"], sort_keys=True), flush=True)`
	cmd := exec.CommandContext(ctx, "python3", "-c", script, proxy.Listen, "py-cut")
	cmd.Env = os.Environ()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	next := func() string {
		t.Helper()
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("python's observe ended")
			}
			return l
		case <-time.After(30 * time.Second):
			t.Fatal("no event from python within 30 s")
		}
		return ""
	}
	if l := next(); !strings.HasPrefix(l, "no_leader ") {
		t.Fatalf("first event %q, want no_leader", l)
	}
	proxy.Stop()
	c, err := client.New(srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	l, err := c.Campaign(ctx, "py-cut", client.CampaignOptions{TTL: 10 * time.Second, Owner: "during-cut"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Resign(context.Background())
	time.Sleep(300 * time.Millisecond)
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	if got := next(); got != `resync {"reason": "cursor_unknown"}` {
		t.Fatalf("after the cut: %q, want resync (cursor_unknown: Last-Event-ID was sent)", got)
	}
	if got := next(); !strings.HasPrefix(got, "leader ") || !strings.Contains(got, `"owner": "during-cut", "term": `+strconv.FormatUint(l.Term(), 10)) {
		t.Fatalf("after the resync: %q, want the leader elected during the cut (term %d)", got, l.Term())
	}
}

// The README's Python election snippet runs as written from the
// repository's root against a real lockd.
func TestReadmeElectionPython(t *testing.T) {
	need(t, "python3")
	srv := lockdtest.Start(t, nil)
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## Leader election\n")
	if !ok {
		t.Fatal("README has no Leader election section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	_, rest, ok := strings.Cut(section, "```python\n")
	if !ok {
		t.Fatal("README's Leader election has no python block")
	}
	snippet, _, _ := strings.Cut(rest, "```\n")
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "python3", "-c", snippet)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "LOCKD_ADDR="+srv.Addr)
	out, err := cmd.CombinedOutput()
	t.Logf("README's Python snippet:\n%s", out)
	if err != nil {
		t.Fatalf("python3: %v", err)
	}
	_, rest, ok = strings.Cut(string(out), "leading, term ")
	if !ok {
		t.Fatal("output lacks the term")
	}
	term := strings.Fields(rest)[0]
	for _, want := range []string{
		"'owner': 'node-d', 'value': 'http://node-d:9090'",
		"'term': " + term,
		"{'last_term': " + term + ", 'reason': 'resigned'}",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q", want)
		}
	}
}
