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
