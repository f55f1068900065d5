package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// `lockctl run --read` commands run side by side, a `--write` one is
// refused while a reader runs and then runs alone; each gets LOCKD_MODE.
func TestRunReadWrite(t *testing.T) {
	srv := sharedServer(t)
	key := k(t, "ctl-rw")
	started := filepath.Join(t.TempDir(), "started")
	first := command(t, srv, "run", key, "--read", "--ttl", "5s", "--", "sh", "-c", `touch "$MARK"; sleep 3; echo "$LOCKD_MODE"`)
	first.Env = append(first.Env, "MARK="+started)
	var firstOut strings.Builder
	first.Stdout = &firstOut
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(started); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first reader's command did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	r := lockctl(t, srv, "run", key, "--read", "--", "sh", "-c", `echo "mode=$LOCKD_MODE token=$LOCKD_TOKEN"`)
	wantCode(t, r, exitOK)
	if !strings.Contains(r.stdout, "mode=read token=") {
		t.Errorf("second reader's output %q, want mode=read and a token", r.stdout)
	}
	marker := filepath.Join(t.TempDir(), "wrote")
	wantCode(t, lockctl(t, srv, "run", key, "--write", "--", "touch", marker), exitHeld)
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the writer's command ran while a reader held")
	}
	wantCode(t, lockctl(t, srv, "run", key, "--read", "--write", "--", "true"), exitUsage)

	w := lockctl(t, srv, "run", key, "--write", "--wait", "30s", "--", "sh", "-c", `echo "mode=$LOCKD_MODE"`)
	wantCode(t, w, exitOK)
	if err := first.Wait(); err != nil {
		t.Fatalf("first reader: %v", err)
	}
	if strings.TrimSpace(firstOut.String()) != "read" || !strings.Contains(w.stdout, "mode=write") {
		t.Errorf("outputs %q and %q, want read and mode=write", firstOut.String(), w.stdout)
	}
	// A plain run has no mode.
	p := lockctl(t, srv, "run", key, "--", "sh", "-c", `echo "mode=${LOCKD_MODE-unset}"`)
	wantCode(t, p, exitOK)
	if !strings.Contains(p.stdout, "mode=unset") {
		t.Errorf("plain run's output %q, want LOCKD_MODE unset", p.stdout)
	}
}
