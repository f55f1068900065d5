package examples_test

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lockd/lockd/internal/lockdtest"
)

// The README's session snippet runs as written against a real lockd: two
// grants in one session, one renew, and a close that frees both.
func TestReadmeSessionSnippet(t *testing.T) {
	need(t, "curl")
	need(t, "sh")
	srv := lockdtest.Start(t, nil)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", readmeBlock(t, "## Sessions"))
	cmd.Env = append(os.Environ(), "LOCKD="+srv.URL)
	out, err := cmd.CombinedOutput()
	t.Logf("README snippet:\n%s", out)
	if err != nil {
		t.Fatalf("snippet: %v", err)
	}
	exp := regexp.MustCompile(`"session_id":"[^"]+","owner":"worker-1","ttl_ms":10000,"expires_at":"([^"]+)"`).FindStringSubmatch(string(out))
	if exp == nil {
		t.Fatal("the open printed no session")
	}
	for _, want := range []string{
		`{"key":"jobs:a","lease_id":`, `{"key":"jobs:b","lease_id":`, // the grants
		`"ttl_ms":10000,"expires_at":"` + exp[1] + `"}`, // a grant shows the session's deadline
		"\n204\n", // close
		`{"key":"jobs:a","held":false`,
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q", want)
		}
	}
}
