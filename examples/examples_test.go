// The language examples run here against a real lockd, so that the README's
// snippets cannot rot.
package examples_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lockd/lockd/internal/testserver"

	"github.com/lockd/lockd/client"
	"github.com/lockd/lockd/examples/kvstore"
	"github.com/lockd/lockd/internal/lockdtest"
)

func TestMain(m *testing.M) { lockdtest.Main(m) }

// need skips when a tool is missing, except in CI (LOCKD_REQUIRE_SERVERS=1).
func need(t *testing.T, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		testserver.Missing(t, tool+" not installed")
	}
	return p
}

func TestCurlScript(t *testing.T) {
	need(t, "curl")
	need(t, "sh")
	runExample(t, "curl-example", "sh", "curl.sh")
}

func TestPythonExample(t *testing.T) {
	need(t, "python3")
	runExample(t, "python-example", "python3", "python/lockd_example.py")
}

var tokenRE = regexp.MustCompile(`acquired (\S+) token=(\d+)`)

// runExample runs an example against a real lockd and a fenced kvstore and
// checks that it acquired, wrote with its token, renewed and released.
func runExample(t *testing.T, key string, argv ...string) {
	srv := lockdtest.Start(t, nil)
	kv := httptest.NewServer(kvstore.NewStore().Handler())
	t.Cleanup(kv.Close)
	kvURL := kv.URL + "/kv/" + key

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], append(argv[1:], key)...)
	cmd.Env = append(os.Environ(), "LOCKD_ADDR="+srv.Addr, "KV_URL="+kvURL)
	out, err := cmd.CombinedOutput()
	t.Logf("%s:\n%s", strings.Join(argv, " "), out)
	if err != nil {
		t.Fatalf("%s: %v", strings.Join(argv, " "), err)
	}
	m := tokenRE.FindStringSubmatch(string(out))
	if m == nil || m[1] != key {
		t.Fatalf("output lacks %q", "acquired "+key+" token=N")
	}
	for _, want := range []string{"wrote " + kvURL + ": 204", "renewed " + key + " token=" + m[2], "released " + key} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// The resource holds the example's write, made with its token.
	resp, err := http.Get(kvURL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Lock-Token") != m[2] || !strings.Contains(string(body), "token "+m[2]) {
		t.Errorf("kvstore has %d %q with token %q; want the example's write with token %s", resp.StatusCode, body, resp.Header.Get("Lock-Token"), m[2])
	}
	// And the lock is free again.
	c, err := client.New(srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.Inspect(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if st.Held {
		t.Errorf("lock %s still held after the example: %+v", key, st.Holder)
	}
}
