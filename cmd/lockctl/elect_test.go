package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lockd/lockd/client"
	"github.com/lockd/lockd/internal/lockdtest"
)

// elect gives the command the election's name, its term and lease id,
// passes the command's status through, and resigns when the command exits:
// the next single-try elect wins at once, with a higher term.
func TestElectPassesEnvStatusAndResigns(t *testing.T) {
	srv := sharedServer(t)
	name := k(t, "ctl-elect")
	// The child proclaims a new value with its lease id, and looks.
	r := lockctl(t, srv, "elect", name, "--value", "http://me:1", "--ttl", "5s", "--", "sh", "-c",
		`echo "election=$LOCKD_ELECTION term=$LOCKD_TERM lease=$LOCKD_LEASE_ID deadline=$LOCKD_DEADLINE addr=$LOCKD_ADDR"
		curl -sS -X POST "http://$LOCKD_ADDR/v1/elections/$LOCKD_ELECTION/proclaim" -H 'Content-Type: application/json' \
		  -d "{\"lease_id\": \"$LOCKD_LEASE_ID\", \"value\": \"http://me:2\"}" >/dev/null
		curl -sS "http://$LOCKD_ADDR/v1/elections/$LOCKD_ELECTION"; echo
		exit 3`)
	wantCode(t, r, 3)
	if !strings.Contains(r.stdout, `"value":"http://me:2"`) {
		t.Errorf("the child's proclaim did not show: %s", r.stdout)
	}
	for _, want := range []string{"election=" + name + " ", "term=", "lease=", "deadline=20", "addr=" + srv.Addr} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("child output %q lacks %q", r.stdout, want)
		}
	}
	if strings.Contains(r.stdout, "term= ") || strings.Contains(r.stdout, "lease= ") {
		t.Errorf("empty variable in %q", r.stdout)
	}
	first := termOf(t, r.stdout)
	r = lockctl(t, srv, "elect", name, "--ttl", "5s", "--", "sh", "-c", `echo "term=$LOCKD_TERM"`)
	wantCode(t, r, exitOK)
	if next := termOf(t, r.stdout); next <= first {
		t.Errorf("term %d after %d, want greater", next, first)
	}
}

func termOf(t *testing.T, out string) uint64 {
	t.Helper()
	_, rest, ok := strings.Cut(out, "term=")
	if !ok {
		t.Fatalf("no term in %q", out)
	}
	n, err := strconv.ParseUint(strings.Fields(rest)[0], 10, 64)
	if err != nil {
		t.Fatalf("term in %q: %v", out, err)
	}
	return n
}

// Another leader: elect exits with the "held" code after --wait, names the
// leader, and the command never runs.
func TestElectHeldExitsWithHeldCode(t *testing.T) {
	srv := sharedServer(t)
	name := k(t, "ctl-elect-held")
	c, _ := client.New(srv.URL, nil)
	l, err := c.Campaign(t.Context(), name, client.CampaignOptions{TTL: 10 * time.Second, Owner: "incumbent", Value: "v"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Resign(context.Background())
	marker := filepath.Join(t.TempDir(), "ran")
	r := lockctl(t, srv, "elect", name, "--wait", "200ms", "--", "touch", marker)
	wantCode(t, r, exitHeld)
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the command ran without leading")
	}
	if !strings.Contains(r.stderr, "incumbent") {
		t.Errorf("stderr does not name the leader: %s", r.stderr)
	}
}

// Two elects on one name never run their commands at the same time, and
// each term is above the last.
func TestTwoElectsSerialise(t *testing.T) {
	srv := sharedServer(t)
	log := filepath.Join(t.TempDir(), "log")
	script := `echo "start $LOCKD_TERM" >> "$LOG"; sleep 0.5; echo "end $LOCKD_TERM" >> "$LOG"`
	var wg sync.WaitGroup
	codes := make([]int, 2)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := command(t, srv, "elect", k(t, "ctl-elect-serial"), "--ttl", "2s", "--wait", "30s", "--", "sh", "-c", script)
			cmd.Env = append(cmd.Env, "LOG="+log)
			cmd.Run()
			codes[i] = cmd.ProcessState.ExitCode()
		}()
	}
	wg.Wait()
	for i, c := range codes {
		if c != 0 {
			t.Fatalf("elect %d exited %d", i, c)
		}
	}
	b, _ := os.ReadFile(log)
	f := strings.Fields(string(b))
	if len(f) != 8 || f[0] != "start" || f[2] != "end" || f[4] != "start" || f[6] != "end" || f[1] != f[3] || f[5] != f[7] {
		t.Fatalf("commands overlapped or missing:\n%s", b)
	}
	if a, b := termOf(t, "term="+f[1]), termOf(t, "term="+f[5]); b <= a {
		t.Fatalf("terms %d then %d, want increasing", a, b)
	}
}

// The leadership is resigned out from under the command (with the lease id
// from its own environment): the next renew is refused, and the command —
// which ignores SIGTERM — is gone within refusedStopWindow of its SIGTERM,
// not after --grace; elect exits with the lease-lost code.
func TestElectStopsChildWhenLeadershipRefused(t *testing.T) {
	srv := sharedServer(t)
	dir := t.TempDir()
	ticks, termed := filepath.Join(dir, "ticks"), filepath.Join(dir, "termed")
	const grace = 6 * time.Second
	resign := `curl -sS -X POST "http://$LOCKD_ADDR/v1/elections/$LOCKD_ELECTION/resign" -H 'Content-Type: application/json' -d "{\"lease_id\": \"$LOCKD_LEASE_ID\"}"`
	cmd := command(t, srv, "elect", k(t, "ctl-elect-refused"), "--ttl", "15s", "--grace", grace.String(), "--", "sh", "-c",
		`trap 'date +%s%N > "$TERMED"' TERM; `+resign+`; while :; do date +%s%N >> "$TICKS"; sleep 0.02; done`)
	cmd.Env = append(cmd.Env, "TICKS="+ticks, "TERMED="+termed)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Run()
	if got := cmd.ProcessState.ExitCode(); got != exitLeaseLost {
		t.Fatalf("exit %d, want %d (stderr: %s)", got, exitLeaseLost, stderr.String())
	}
	if !strings.Contains(stderr.String(), "leadership of") || !strings.Contains(stderr.String(), "lost") {
		t.Errorf("stderr does not say the leadership was lost: %s", stderr.String())
	}
	termAt := readNanos(t, termed, "the command never saw SIGTERM")
	lastTick := readNanos(t, ticks, "the command never ticked")
	const bound = refusedStopWindow + 2*time.Second
	if ran := lastTick.Sub(termAt); ran > bound {
		t.Fatalf("command ran %v after its SIGTERM, want at most %v (stop window %v, grace %v)", ran, bound, refusedStopWindow, grace)
	}
}

// lockd stops answering (SIGSTOP): renewals of the leadership fail, elect
// says so (jeopardy), and the command — SIGTERM ignored, so SIGKILL — is
// gone before the deadline counted from the last renew that could have
// succeeded.
func TestElectStopsChildBeforeDeadlineWhenServerUnreachable(t *testing.T) {
	srv := lockdtest.Start(t, nil)
	dir := t.TempDir()
	ticks, ready := filepath.Join(dir, "ticks"), filepath.Join(dir, "ready")
	const ttl = 3 * time.Second
	cmd := command(t, srv, "elect", k(t, "ctl-elect-paused"), "--ttl", ttl.String(), "--", "sh", "-c",
		`trap '' TERM; touch "$READY"; while :; do date +%s%N >> "$TICKS"; sleep 0.02; done`)
	cmd.Env = append(cmd.Env, "READY="+ready, "TICKS="+ticks)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFile(t, ready)
	paused := time.Now()
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Resume() })
	cmd.Wait()
	if got := cmd.ProcessState.ExitCode(); got != exitLeaseLost {
		t.Fatalf("exit %d, want %d (stderr: %s)", got, exitLeaseLost, stderr.String())
	}
	lastTick := readNanos(t, ticks, "the command never ticked")
	if deadline := paused.Add(ttl); !lastTick.Before(deadline) {
		t.Fatalf("command still ran at %v, after the deadline %v", lastTick, deadline)
	}
	if !strings.Contains(stderr.String(), "failing") {
		t.Errorf("stderr does not warn that renewals were failing: %s", stderr.String())
	}
	t.Logf("paused at 0, command's last tick at %v (ttl %v)\n%s", lastTick.Sub(paused), ttl, stderr.String())
}

// observe prints the current state, then each change, one line per event,
// as JSON lines with --json, and exits after --count events.
func TestObservePrintsEvents(t *testing.T) {
	srv := sharedServer(t)
	name := k(t, "ctl-observe")
	cmd := command(t, srv, "observe", name, "--json", "--count", "3")
	var out, stderr lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The first event (no leader) shows the stream is open.
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(out.String(), "\n"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no first event; stderr: %s", stderr.String())
		}
	}
	c, _ := client.New(srv.URL, nil)
	l, err := c.Campaign(t.Context(), name, client.CampaignOptions{TTL: 5 * time.Second, Owner: "o", Value: "v"})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Resign(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("observe: %v; stderr: %s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("output %q, want 3 lines", out.String())
	}
	var evs []observeLine
	for _, line := range lines {
		var ev observeLine
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		evs = append(evs, ev)
	}
	if evs[0].Event != "no_leader" || evs[1].Event != "leader" || evs[1].Term != l.Term() || evs[1].Owner != "o" || evs[1].Value != "v" ||
		evs[2].Event != "no_leader" || evs[2].LastTerm != l.Term() || evs[2].Reason != "resigned" {
		t.Fatalf("events %+v, want no_leader, leader {term %d owner o value v}, no_leader resigned", evs, l.Term())
	}
}

// Without --count, observe runs until interrupted, prints human lines, and
// exits 0 on SIGINT.
func TestObserveUntilInterrupted(t *testing.T) {
	srv := sharedServer(t)
	name := k(t, "ctl-observe-int")
	c, _ := client.New(srv.URL, nil)
	l, err := c.Campaign(t.Context(), name, client.CampaignOptions{TTL: 5 * time.Second, Owner: "o", Value: "v"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Resign(context.Background())
	cmd := command(t, srv, "observe", name)
	var out lockedBuffer
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(out.String(), "\n"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no first event")
		}
	}
	cmd.Process.Signal(syscall.SIGINT)
	cmd.Wait()
	if got := cmd.ProcessState.ExitCode(); got != exitOK {
		t.Fatalf("exit %d after SIGINT, want 0", got)
	}
	want := "leader term=" + strconv.FormatUint(l.Term(), 10) + ` owner="o" value="v" expires=20`
	if !strings.HasPrefix(out.String(), want) {
		t.Fatalf("output %q, want a line starting %q", out.String(), want)
	}
}

// lockedBuffer is a bytes.Buffer a test may read while a process writes it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// The README's lockctl election snippet runs as written, through a real sh,
// with a ./scheduler.sh that records its environment.
func TestReadmeElectSnippet(t *testing.T) {
	srv := sharedServer(t)
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## Leader election\n")
	if !ok {
		t.Fatal("README has no Leader election section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var snippet string
	for rest := section; snippet == ""; {
		var block string
		if _, rest, ok = strings.Cut(rest, "```sh\n"); !ok {
			t.Fatal("README's Leader election has no sh block with lockctl elect")
		}
		block, rest, _ = strings.Cut(rest, "```\n")
		if strings.Contains(block, "lockctl elect ") {
			snippet = block
		}
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "scheduler.sh"), []byte("#!/bin/sh\necho \"scheduling as $LOCKD_ELECTION term=$LOCKD_TERM\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", "set -e\n"+snippet)
	cmd.Env = append(os.Environ(), "LOCKD_ADDR="+srv.Addr, "PATH="+filepath.Dir(lockctlBin)+":"+os.Getenv("PATH"))
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	t.Logf("README's lockctl snippet:\n%s", out)
	if err != nil {
		t.Fatalf("sh: %v", err)
	}
	if term := termOf(t, string(out)); term == 0 || !strings.Contains(string(out), "scheduling as scheduler term=") {
		t.Errorf("output lacks the command's line with its term")
	}
	// elect resigned when the command exited: nobody leads.
	if !strings.HasSuffix(string(out), "\nno_leader\n") {
		t.Errorf("output does not end with observe's no_leader line")
	}
}

// observe exits with the codes of the other commands when the stream
// cannot start: a bad name is invalid, no lockd is unavailable.
func TestObserveRefusedExitCodes(t *testing.T) {
	srv := sharedServer(t)
	wantCode(t, lockctl(t, srv, "observe", "bad key!"), exitInvalid)
	wantCode(t, lockctl(t, srv, "--server", "127.0.0.1:1", "observe", "x"), exitUnavailable)
}

// watch prints a key's snapshot, then each grant and its end, one line per
// event (JSON lines with --json), and exits after --count events; its
// refusals exit as observe's do.
func TestWatchPrintsEvents(t *testing.T) {
	srv := sharedServer(t)
	key := k(t, "ctl-watch")
	cmd := command(t, srv, "watch", key, "--json", "--count", "3")
	var out, stderr lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(out.String(), "\n"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no snapshot; stderr: %s", stderr.String())
		}
	}
	c, _ := client.New(srv.URL, nil)
	l, err := c.Acquire(t.Context(), key, client.AcquireOptions{TTL: 5 * time.Second, Owner: "o"})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Release(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("watch: %v; stderr: %s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("output %q, want 3 lines", out.String())
	}
	var evs []keyEventLine
	for _, line := range lines {
		var ev keyEventLine
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		evs = append(evs, ev)
	}
	if evs[0].Event != "snapshot" || evs[0].Key != key || evs[0].Held == nil || *evs[0].Held ||
		evs[1].Event != "acquired" || evs[1].Token != l.Token() || evs[1].Owner != "o" || evs[1].ExpiresAt == "" ||
		evs[2].Event != "released" || evs[2].Token != l.Token() {
		t.Fatalf("events %s, want snapshot (free), acquired {token %d owner o}, released", out.String(), l.Token())
	}

	// Human lines, until interrupted.
	l, err = c.Acquire(t.Context(), key, client.AcquireOptions{TTL: 5 * time.Second, Owner: "o"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(context.Background())
	cmd = command(t, srv, "watch", key)
	var human lockedBuffer
	cmd.Stdout = &human
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(human.String(), "\n"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no snapshot")
		}
	}
	cmd.Process.Signal(syscall.SIGINT)
	cmd.Wait()
	if got := cmd.ProcessState.ExitCode(); got != exitOK {
		t.Fatalf("exit %d after SIGINT, want 0", got)
	}
	if want := "snapshot " + key + " held token=" + strconv.FormatUint(l.Token(), 10) + ` owner="o" expires=20`; !strings.HasPrefix(human.String(), want) {
		t.Fatalf("output %q, want a line starting %q", human.String(), want)
	}
	wantCode(t, lockctl(t, srv, "watch", "bad key!"), exitInvalid)
}
