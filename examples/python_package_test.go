package examples_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lockd/lockd/internal/lockdtest"
)

// TestPythonPackage installs clients/python with pip into a fresh venv, as
// the README says, and runs its unittest suite from outside the source
// tree (so it imports the installed package) against a real lockd.
func TestPythonPackage(t *testing.T) {
	py := need(t, "python3")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	src, err := filepath.Abs("../clients/python")
	if err != nil {
		t.Fatal(err)
	}
	venv := filepath.Join(t.TempDir(), "venv")
	if out, err := exec.CommandContext(ctx, py, "-m", "venv", venv).CombinedOutput(); err != nil {
		if os.Getenv("LOCKD_REQUIRE_SERVERS") == "1" {
			t.Fatalf("python3 -m venv: %v\n%s", err, out)
		}
		t.Skipf("python3 cannot make a venv: %v\n%s", err, out)
	}
	vpy := filepath.Join(venv, "bin", "python")
	// The package builds with its own in-tree backend: no index needed.
	run(t, ctx, venv, []string{"PIP_NO_INDEX=1"}, vpy, "-m", "pip", "install", "--quiet", src)

	srv := lockdtest.Start(t, nil)
	// Run from the venv, not from src: the tests import the installed lockd.
	tests := filepath.Join(t.TempDir(), "tests")
	if err := os.CopyFS(tests, os.DirFS(filepath.Join(src, "tests"))); err != nil {
		t.Fatal(err)
	}
	out := run(t, ctx, venv, []string{"LOCKD_ADDR=" + srv.Addr}, vpy, "-m", "unittest", "discover", "-v", "-s", tests)
	t.Logf("python -m unittest:\n%s", out)
	if !strings.Contains(out, "OK") || strings.Contains(out, "skipped") {
		t.Fatalf("the suite did not run every test against lockd")
	}
	where := run(t, ctx, venv, nil, vpy, "-c", "import lockd; print(lockd.__file__)")
	if !strings.HasPrefix(strings.TrimSpace(where), venv) {
		t.Errorf("the tests imported lockd from %s, not from the venv", where)
	}
}
