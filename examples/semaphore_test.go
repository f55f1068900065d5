package examples_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lockd/lockd/examples/kvstore"
	"github.com/lockd/lockd/internal/lockdtest"
)

// The README's semaphore snippet runs as written against a real lockd: two
// permits in distinct slots, a third refused with the holders, another size
// refused with the current one, a release and the inspection after it.
func TestReadmeSemaphoreSnippet(t *testing.T) {
	need(t, "curl")
	need(t, "sh")
	srv := lockdtest.Start(t, nil)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", readmeBlock(t, "## Semaphores"))
	cmd.Env = append(os.Environ(), "LOCKD="+srv.URL)
	out, err := cmd.CombinedOutput()
	t.Logf("README snippet:\n%s", out)
	if err != nil {
		t.Fatalf("snippet: %v", err)
	}
	for _, want := range []string{
		`"slot":0,"permits":2,"owner":"w1"`, `"slot":1,"permits":2,"owner":"w2"`, // the permits
		`"code":"lock_held","holders":[{"slot":0,"owner":"w1"`, "}]}\n409\n", // full
		`"code":"permits_mismatch","permits":2}` + "\n409\n",
		"\n204\n", // release
		`{"key":"api:quota","permits":2,"holders":[{"slot":1,"owner":"w2",`, `"waiters":0}`,
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

// The README's per-slot fencing snippet runs as written against a real
// lockd and the kvstore example: the paused permit's late write is refused
// with 409 after its slot's next holder wrote, and the other slot's holder,
// with a lower token than that next holder, still writes.
func TestReadmeSemaphoreResourceSnippet(t *testing.T) {
	need(t, "curl")
	need(t, "sh")
	srv := lockdtest.Start(t, nil)
	kv := httptest.NewServer(kvstore.NewStore().Handler())
	t.Cleanup(kv.Close)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", readmeBlock(t, "### A resource fenced per slot"))
	cmd.Env = append(os.Environ(), "LOCKD="+srv.URL, "KV="+kv.URL)
	out, err := cmd.CombinedOutput()
	t.Logf("README snippet:\n%s", out)
	if err != nil {
		t.Fatalf("snippet: %v", err)
	}
	want := []string{"w1: 204\n", "w3: 204\n", `{"code":"stale_lock_token",`, "\nw1-late: 409\n", "w2: 204\n"}
	at := 0
	for _, w := range want {
		i := strings.Index(string(out[at:]), w)
		if i < 0 {
			t.Fatalf("output lacks %q after byte %d", w, at)
		}
		at += i + len(w)
	}
	if !strings.HasSuffix(string(out), "\nw3\n") {
		t.Errorf("part-0 does not end the output with w3's value")
	}
	// Slot 0's last write (w3's) has a higher token than slot 1's (w2's):
	// fenced per key, w2's write would have been refused.
	tok := func(part string) uint64 {
		resp, err := http.Get(kv.URL + "/kv/" + part)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		n, _ := strconv.ParseUint(resp.Header.Get("Lock-Token"), 10, 64)
		if resp.Header.Get("Lock-Slot") != strings.TrimPrefix(part, "part-") {
			t.Errorf("%s shows Lock-Slot %q", part, resp.Header.Get("Lock-Slot"))
		}
		return n
	}
	if t0, t1 := tok("part-0"), tok("part-1"); t0 <= t1 {
		t.Errorf("part-0's token %d not above part-1's %d: the snippet did not show another slot's lower token accepted", t0, t1)
	}
}
