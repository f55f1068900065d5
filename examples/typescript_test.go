package examples_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lockd/lockd/internal/lockdtest"
)

// npmCI installs dir's pinned packages (npm ci) unless node_modules already
// holds exactly what dir's package-lock.json says.
func npmCI(t *testing.T, ctx context.Context, dir string) {
	t.Helper()
	lock, err := os.ReadFile(filepath.Join(dir, "package-lock.json"))
	if err != nil {
		t.Fatal(err)
	}
	stamp := filepath.Join(dir, "node_modules", ".lockd-installed")
	if have, err := os.ReadFile(stamp); err == nil && bytes.Equal(have, lock) {
		return
	}
	run(t, ctx, dir, nil, "npm", "ci", "--no-audit", "--no-fund", "--loglevel=error")
	if err := os.WriteFile(stamp, lock, 0o644); err != nil {
		t.Fatal(err)
	}
}

func run(t *testing.T, ctx context.Context, dir string, env []string, argv ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s (in %s): %v\n%s", strings.Join(argv, " "), dir, err, out)
	}
	return string(out)
}

// TestTypeScriptClient is a newcomer's TypeScript walk: a client generated
// from api/openapi.yaml by openapi-typescript, type-checked with tsc (so a
// spec that makes an optional field required fails here), then driven
// through openapi-fetch against a real lockd with a key openapi-fetch
// percent-encodes (reports:nightly → reports%3Anightly).
func TestTypeScriptClient(t *testing.T) {
	need(t, "node")
	need(t, "npm")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	dir, err := filepath.Abs("typescript")
	if err != nil {
		t.Fatal(err)
	}
	npmCI(t, ctx, dir)

	// The committed schema.d.ts is what the pinned generator makes of the
	// current spec: `npm run gen` after a spec change.
	fresh := filepath.Join(t.TempDir(), "schema.d.ts")
	run(t, ctx, dir, nil, filepath.Join(dir, "node_modules", ".bin", "openapi-typescript"), "../../api/openapi.yaml", "-o", fresh)
	want, err := os.ReadFile(fresh)
	if err != nil {
		t.Fatal(err)
	}
	have, err := os.ReadFile(filepath.Join(dir, "schema.d.ts"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(have, want) {
		t.Errorf("examples/typescript/schema.d.ts is stale: run `npm run gen` in examples/typescript")
	}

	run(t, ctx, dir, nil, filepath.Join(dir, "node_modules", ".bin", "tsc"), "-p", ".")

	srv := lockdtest.Start(t, nil)
	out := run(t, ctx, dir, []string{"LOCKD_URL=http://" + srv.Addr}, "node", "dist/walk.js", "reports:nightly")
	t.Logf("walk.js:\n%s", out)
	for _, line := range []string{
		"acquired reports:nightly token=",
		"refused reports:nightly: lock_held",
		"renewed reports:nightly token=",
		"inspected reports:nightly held=true owner=walk.ts",
		"released reports:nightly",
		"released again: 410 lease_expired",
	} {
		if !strings.Contains(out, line) {
			t.Errorf("walk.js output lacks %q", line)
		}
	}

	// The semaphore walk, same client: slots, the typed refusals, a waiter
	// served in the freed slot with a higher token.
	out = run(t, ctx, dir, []string{"LOCKD_URL=http://" + srv.Addr}, "node", "dist/semaphore.js", "api:quota")
	t.Logf("semaphore.js:\n%s", out)
	for _, line := range []string{
		"permit ts-1 slot=0 token=",
		"permit ts-2 slot=1 token=",
		"refused api:quota: lock_held holders(slots)=0,1",
		"refused permits=3: permits_mismatch permits=2",
		"permit ts-3 slot=0 token=",
		`waiter took slot=0 token=`, `{"Lock-Key":"api:quota","Lock-Slot":"0","Lock-Token":"`,
		"renewed slot=1 token=",
		"inspected api:quota permits=2 holders=ts-2,ts-3",
		"released all; again: 410 lease_expired",
	} {
		if !strings.Contains(out, line) {
			t.Errorf("semaphore.js output lacks %q", line)
		}
	}
	if got, _ := httpGet(t, srv.URL+"/v1/semaphores/api:quota"); !strings.Contains(got, `"holders":[]`) {
		t.Errorf("after semaphore.js: %s, want no holders", got)
	}
}
