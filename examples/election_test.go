package examples_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lockd/lockd/internal/lockdtest"
)

// readmeBlock is the first ```sh block after heading in the README.
func readmeBlock(t *testing.T, heading string) string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "\n"+heading+"\n")
	if !ok {
		t.Fatalf("README has no %q", heading)
	}
	_, rest, ok = strings.Cut(rest, "```sh\n")
	if !ok {
		t.Fatalf("README's %q has no sh block", heading)
	}
	block, _, _ := strings.Cut(rest, "```\n")
	return block
}

// The README's leader election snippet runs as written against a real lockd.
func TestReadmeElectionSnippet(t *testing.T) {
	need(t, "curl")
	need(t, "sh")
	srv := lockdtest.Start(t, nil)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", readmeBlock(t, "## Leader election"))
	cmd.Env = append(os.Environ(), "LOCKD="+srv.URL)
	out, _ := cmd.CombinedOutput() // the observe is cut by --max-time: exit 28
	t.Logf("README snippet:\n%s", out)
	term := regexp.MustCompile(`"term":(\d+)`).FindStringSubmatch(string(out))
	if term == nil {
		t.Fatal("the campaign printed no term")
	}
	for _, want := range []string{
		`"owner":"node-a","value":"http://node-a:8080"`, // campaign
		`"value":"http://node-a:9090"`,                  // proclaim
		`"candidates":0`,                                // inspect
		"event: leader\ndata: {\"term\":" + term[1] + `,"owner":"node-a","value":"http://node-a:9090"`, // observe
		"\n204\n", // resign
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	resp, err := http.Get(srv.URL + "/v1/elections/scheduler")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&st)
	if st["leader"] != nil {
		t.Errorf("after the snippet: %v, want nobody leading", st)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// A curl -N observe through one lockd sees the leader, then no_leader
// (expired) at the leader's deadline plus the clock skew after the leader's
// lockd was SIGKILLed: nobody resigns and nobody touches the election.
func TestObserveSeesDeadLeaderExpire(t *testing.T) {
	need(t, "curl")
	etcdAddr := freeAddr(t)
	store := lockdtest.Start(t, &lockdtest.Options{Args: []string{"--embed-etcd-client-url", "http://" + etcdAddr, "--embed-etcd-peer-url", "http://" + freeAddr(t)}})
	leader := lockdtest.Start(t, &lockdtest.Options{Args: []string{"--etcd-endpoints", etcdAddr}})

	resp, err := http.Post(leader.URL+"/v1/elections/failover/campaign", "application/json",
		strings.NewReader(`{"ttl_ms": 1500, "owner": "doomed", "value": "v"}`))
	if err != nil {
		t.Fatal(err)
	}
	var won struct {
		Term      uint64 `json:"term"`
		ExpiresAt string `json:"expires_at"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&won)
	resp.Body.Close()
	if resp.StatusCode != 200 || won.Term == 0 {
		t.Fatalf("campaign: %d %+v", resp.StatusCode, won)
	}
	expires, err := time.Parse(time.RFC3339Nano, won.ExpiresAt)
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	curl := exec.CommandContext(ctx, "curl", "-sS", "-N", store.URL+"/v1/elections/failover/observe")
	stdout, err := curl.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := curl.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = curl.Wait() })
	type frame struct {
		event, data string
		at          time.Time
	}
	frames := make(chan frame, 16)
	go func() {
		defer close(frames)
		sc := bufio.NewScanner(stdout)
		var f frame
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				f.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				f.data = line[6:]
			case line == "" && f.event != "":
				f.at = time.Now()
				frames <- f
				f = frame{}
			}
		}
	}()
	next := func() frame {
		t.Helper()
		select {
		case f, ok := <-frames:
			if !ok {
				t.Fatal("curl's stream ended")
			}
			return f
		case <-time.After(20 * time.Second):
			t.Fatal("no event within 20s")
		}
		return frame{}
	}
	first := next()
	if first.event != "leader" || !strings.Contains(first.data, `"owner":"doomed"`) {
		t.Fatalf("first event %+v, want the leader", first)
	}
	if err := leader.Kill(); err != nil {
		t.Fatal(err)
	}
	ev := next()
	var nl struct {
		LastTerm uint64 `json:"last_term"`
		Reason   string `json:"reason"`
	}
	_ = json.Unmarshal([]byte(ev.data), &nl)
	if ev.event != "no_leader" || nl.LastTerm != won.Term || nl.Reason != "expired" {
		t.Fatalf("after the leader's lockd died: %+v, want no_leader {last_term %d, reason expired}", ev, won.Term)
	}
	if ev.at.Before(expires) {
		t.Errorf("no_leader at %v, before the leader's deadline %v", ev.at, expires)
	}
	// Generous: the skew (1 s by default) plus scheduling on a shared machine;
	// etcd itself would drop the entry only 2-12 s after the deadline.
	if late := ev.at.Sub(expires); late > 5*time.Second {
		t.Errorf("no_leader %v after the deadline, want about the clock skew (1 s)", late)
	}
	t.Logf("no_leader %v after the leader's deadline", ev.at.Sub(expires))
}
