package examples_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/lockd/lockd/internal/lockdtest"
)

// The README's lock-delay snippet runs as written against a real lockd: an
// expired lease keeps its key closed for its delay (409 with the delay,
// inspection's delayed_until), and a waiter is granted when it ends.
func TestReadmeLockDelaySnippet(t *testing.T) {
	need(t, "curl")
	need(t, "sh")
	srv := lockdtest.Start(t, nil)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", readmeBlock(t, "## Lock-delay"))
	cmd.Env = append(os.Environ(), "LOCKD="+srv.URL)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	t.Logf("README snippet (%v):\n%s", took, out)
	if err != nil {
		t.Fatalf("snippet: %v", err)
	}
	for _, want := range []string{
		`"code":"lock_held","lock_delay":{"until":"`, `"expired_token":`, "}}\n409\n",
		`{"key":"ledger","held":false,"waiters":0,"delayed_until":"`,
		`"owner":"w2","ttl_ms":15000,`, "}\n200\n",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// Granted at deadline (1 s) + delay (2 s) + skew (1 s), not when the
	// expiry was noticed (2.5 s in).
	if took < 3900*time.Millisecond {
		t.Errorf("the snippet took %v: the waiter was granted inside the 2 s lock-delay", took)
	}
}
