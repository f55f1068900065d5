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

// The README's read-write lock snippet runs as written against a real
// lockd: two readers share, a waiting writer holds back a later reader, and
// is granted once both readers release.
func TestReadmeRWLockSnippet(t *testing.T) {
	need(t, "curl")
	need(t, "sh")
	srv := lockdtest.Start(t, nil)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", readmeBlock(t, "## Read-write locks"))
	cmd.Env = append(os.Environ(), "LOCKD="+srv.URL)
	out, err := cmd.CombinedOutput()
	t.Logf("README snippet:\n%s", out)
	if err != nil {
		t.Fatalf("snippet: %v", err)
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`\{"key":"catalog","lease_id":"[^"]+","token":\d+,"owner":"reader-1","ttl_ms":10000,"expires_at":"[^"]+","mode":"read"\}`),
		regexp.MustCompile(`"code":"lock_held","holders":\[\{"mode":"read","owner":"reader-1",[^]]*\{"mode":"read","owner":"reader-2"`),
		regexp.MustCompile(`\{"key":"catalog","mode":"read","holders":\[[^]]+\],"waiters":\{"read":0,"write":1\}\}`),
		regexp.MustCompile(`\n204\n204\n`),
		regexp.MustCompile(`"owner":"writer",[^}]*"mode":"write"\}`),
	} {
		if !want.MatchString(string(out)) {
			t.Errorf("output lacks %s", want)
		}
	}
	if strings.Count(string(out), `"mode":"write"`) != 1 {
		t.Errorf("output shows a write grant other than the writer's")
	}
}
