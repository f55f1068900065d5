package deploy_test

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lockd/lockd/internal/auth"
	"github.com/lockd/lockd/internal/lockdtest"
)

func TestMain(m *testing.M) { lockdtest.Main(m) }

// need skips when a tool is missing, except in CI (LOCKD_REQUIRE_SERVERS=1).
func need(t *testing.T, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		if os.Getenv("LOCKD_REQUIRE_SERVERS") == "1" {
			t.Fatalf("%s not installed (LOCKD_REQUIRE_SERVERS=1)", tool)
		}
		t.Skipf("%s not installed", tool)
	}
	return p
}

// execStart is the unit's ExecStart command line.
func execStart(t *testing.T, unit string) []string {
	t.Helper()
	for _, line := range strings.Split(unit, "\n") {
		if v, ok := strings.CutPrefix(line, "ExecStart="); ok {
			return strings.Fields(v)
		}
	}
	t.Fatal("lockd.service has no ExecStart")
	return nil
}

// systemd-analyze verify accepts lockd.service (with ExecStart pointing at a
// freshly built lockd, since verify checks that the binary exists).
func TestSystemdUnitVerifies(t *testing.T) {
	sa := need(t, "systemd-analyze")
	data, err := os.ReadFile("lockd.service")
	if err != nil {
		t.Fatal(err)
	}
	bin := lockdtest.Binary(t)
	unit := strings.Replace(string(data), "ExecStart=/usr/local/bin/lockd", "ExecStart="+bin, 1)
	path := filepath.Join(t.TempDir(), "lockd.service")
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", path).CombinedOutput()
	if err != nil || strings.Contains(string(out), "lockd.service") {
		t.Fatalf("systemd-analyze verify lockd.service: %v\n%s", err, out)
	}
}

// The unit's command line starts a real lockd (its flags exist and agree
// with each other) with the sample tokens file, and it gets ready.
func TestSystemdUnitCommandLineRuns(t *testing.T) {
	data, err := os.ReadFile("lockd.service")
	if err != nil {
		t.Fatal(err)
	}
	argv := execStart(t, string(data))
	if argv[0] != "/usr/local/bin/lockd" {
		t.Fatalf("ExecStart runs %s, want /usr/local/bin/lockd", argv[0])
	}
	var args []string
	for i := 1; i < len(argv); i += 2 {
		flag, val := argv[i], argv[i+1]
		switch flag {
		case "--listen", "--data-dir":
			continue // lockdtest picks a free port and a temp dir
		case "--auth-file":
			val = "tokens.example.json"
		}
		args = append(args, flag, val)
	}
	srv := lockdtest.Start(t, &lockdtest.Options{Args: args})
	resp, err := http.Get(srv.URL + "/v1/locks/x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /v1/locks/x without a token: %d, want 401 (the tokens file in force)", resp.StatusCode)
	}
}

// lockd's own parser accepts the sample tokens file, with the principals
// the README describes.
func TestTokensExampleParses(t *testing.T) {
	s, err := auth.Load("tokens.example.json")
	if err != nil {
		t.Fatalf("auth.Load(tokens.example.json): %v", err)
	}
	p := s.Cert("worker-1.internal")
	if p == nil || p.Name != "nightly" {
		t.Fatalf("the certificate name worker-1.internal maps to %+v, want principal nightly", p)
	}
	if s.Token("not-a-token-in-the-file") != nil {
		t.Errorf("an unknown secret is accepted")
	}
}

// promtool checks the alert rules and runs their unit tests.
func TestAlertRules(t *testing.T) {
	pt := need(t, "promtool")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	for _, args := range [][]string{{"check", "rules", "lockd-alerts.yml"}, {"test", "rules", "lockd-alerts.test.yml"}} {
		cmd := exec.CommandContext(ctx, pt, args...)
		cmd.Dir = "prometheus"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
