package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

var lockctlBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lockctl-test-")
	if err != nil {
		panic(err)
	}
	lockctlBin = filepath.Join(dir, "lockctl")
	if out, err := exec.Command("go", "build", "-o", lockctlBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building lockctl: %v\n%s", err, out)
		os.Exit(2)
	}
	lockdtest.Main(m, func() {
		if shared.srv != nil {
			shared.srv.Close()
		}
		os.RemoveAll(dir)
	})
}

var shared struct {
	once sync.Once
	srv  *lockdtest.Server
	err  error
}

// sharedServer is one lockd for the tests that do not pause or kill it.
func sharedServer(t *testing.T) *lockdtest.Server {
	t.Helper()
	bin := lockdtest.Binary(t)
	shared.once.Do(func() {
		shared.srv, shared.err = lockdtest.StartServer(bin, lockdtest.Options{})
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.srv
}

type result struct {
	code           int
	stdout, stderr string
}

// lockctl runs the real binary against srv.
func lockctl(t *testing.T, srv *lockdtest.Server, args ...string) result {
	t.Helper()
	cmd := command(t, srv, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("lockctl %v: %v", args, err)
	}
	return result{cmd.ProcessState.ExitCode(), out.String(), errb.String()}
}

func command(t *testing.T, srv *lockdtest.Server, args ...string) *exec.Cmd {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, lockctlBin, args...)
	cmd.Env = append(os.Environ(), "LOCKD_ADDR="+srv.Addr, "PATH="+filepath.Dir(lockctlBin)+":"+os.Getenv("PATH"))
	return cmd
}

func wantCode(t *testing.T, r result, want int) {
	t.Helper()
	if r.code != want {
		t.Fatalf("exit code %d, want %d\nstdout: %s\nstderr: %s", r.code, want, r.stdout, r.stderr)
	}
}

func TestUsageErrors(t *testing.T) {
	srv := sharedServer(t)
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"run", "k"},
		{"acquire"},
		{"acquire", "k", "extra"},
		{"acquire", "k", "--ttl", "1ms"},
		{"run", "k", "--ttl", "1s", "--grace", "900ms", "--", "true"},
		{"status"},
		{"elect", "n"},
		{"elect", "n", "--ttl", "1s", "--grace", "900ms", "--", "true"},
		{"observe"},
		{"observe", "a", "b"},
		{"observe", "a", "--count", "-1"},
		{"watch"},
		{"watch", "a", "b"},
	} {
		wantCode(t, lockctl(t, srv, args...), exitUsage)
	}
	wantCode(t, lockctl(t, srv, "run", k(t, "ctl-nocmd"), "--", "no-such-command-xyz"), exitNotFound)
	wantCode(t, lockctl(t, srv, "elect", k(t, "ctl-nocmd"), "--", "no-such-command-xyz"), exitNotFound)
}

func TestScriptCommands(t *testing.T) {
	srv := sharedServer(t)
	r := lockctl(t, srv, "acquire", k(t, "ctl-script"), "--ttl", "10s", "--owner", "script", "--json")
	wantCode(t, r, exitOK)
	var g struct {
		LeaseID string `json:"lease_id"`
		Token   uint64 `json:"token"`
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil {
		t.Fatalf("acquire --json: %v\n%s", err, r.stdout)
	}
	json.Unmarshal([]byte(r.stdout), &g)
	if raw["key"] != k(t, "ctl-script") || g.LeaseID == "" || g.Token == 0 || raw["deadline"] == nil {
		t.Fatalf("acquire --json output %s", r.stdout)
	}

	// Held: a single try exits with the "held" code and names the holder.
	r = lockctl(t, srv, "acquire", k(t, "ctl-script"))
	wantCode(t, r, exitHeld)
	if !strings.Contains(r.stderr, "script") {
		t.Errorf("held message does not name the holder: %s", r.stderr)
	}

	r = lockctl(t, srv, "status", k(t, "ctl-script"))
	wantCode(t, r, exitOK)
	if !strings.Contains(r.stdout, `held by "script", token `+strconv.FormatUint(g.Token, 10)) {
		t.Errorf("status: %s", r.stdout)
	}
	r = lockctl(t, srv, "list", "--prefix", k(t, "ctl-script"), "--json")
	wantCode(t, r, exitOK)
	var list []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil || len(list) != 1 || list[0]["key"] != k(t, "ctl-script") {
		t.Fatalf("list --json: %v %s", err, r.stdout)
	}
	r = lockctl(t, srv, "list", "--prefix", k(t, "ctl-script"))
	wantCode(t, r, exitOK)
	if !strings.Contains(r.stdout, k(t, "ctl-script")) || !strings.Contains(r.stdout, "script") {
		t.Errorf("list: %s", r.stdout)
	}

	r = lockctl(t, srv, "renew", k(t, "ctl-script"), g.LeaseID, "--ttl", "5s")
	wantCode(t, r, exitOK)
	if !strings.Contains(r.stdout, "export LOCKD_TOKEN='"+strconv.FormatUint(g.Token, 10)+"'") {
		t.Errorf("renew output: %s", r.stdout)
	}
	wantCode(t, lockctl(t, srv, "renew", k(t, "ctl-script"), "AAAAAAAAAAAAAAAAAAAAAA"), exitLeaseLost)

	r = lockctl(t, srv, "release", k(t, "ctl-script"), g.LeaseID)
	wantCode(t, r, exitOK)
	wantCode(t, lockctl(t, srv, "release", k(t, "ctl-script"), g.LeaseID), exitLeaseLost)
	r = lockctl(t, srv, "status", "--json", k(t, "ctl-script"))
	wantCode(t, r, exitOK)
	if !strings.Contains(r.stdout, `"held": false`) {
		t.Errorf("status after release: %s", r.stdout)
	}

	// The human acquire output is `export NAME='value'` lines a shell evals.
	r = lockctl(t, srv, "acquire", k(t, "ctl-script"), "--ttl", "5s")
	wantCode(t, r, exitOK)
	cmd := exec.Command("sh", "-c", `eval "$GRANT"; exec lockctl release`)
	cmd.Env = append(os.Environ(), "GRANT="+r.stdout, "LOCKD_ADDR="+srv.Addr, "PATH="+filepath.Dir(lockctlBin)+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("release from $LOCKD_KEY/$LOCKD_LEASE_ID: %v %s", err, out)
	}

	wantCode(t, lockctl(t, srv, "acquire", "bad key!"), exitInvalid)
	wantCode(t, lockctl(t, srv, "--server", "127.0.0.1:1", "status", "x"), exitUnavailable)
}

func TestRunPassesEnvAndStatus(t *testing.T) {
	srv := sharedServer(t)
	r := lockctl(t, srv, "run", k(t, "ctl-env"), "--ttl", "5s", "--", "sh", "-c",
		`echo "key=$LOCKD_KEY token=$LOCKD_TOKEN lease=$LOCKD_LEASE_ID deadline=$LOCKD_DEADLINE"; exit 3`)
	wantCode(t, r, 3)
	for _, want := range []string{"key=" + k(t, "ctl-env") + " ", "token=", "lease=", "deadline=20"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("child output %q lacks %q", r.stdout, want)
		}
	}
	if strings.Contains(r.stdout, "token= ") || strings.Contains(r.stdout, "lease= ") {
		t.Errorf("empty variable in %q", r.stdout)
	}
	// Released when the child exited.
	wantCode(t, lockctl(t, srv, "acquire", k(t, "ctl-env"), "--ttl", "1s"), exitOK)
}

func TestRunHeldExitsWithHeldCode(t *testing.T) {
	srv := sharedServer(t)
	wantCode(t, lockctl(t, srv, "acquire", k(t, "ctl-held"), "--ttl", "10s"), exitOK)
	marker := filepath.Join(t.TempDir(), "ran")
	r := lockctl(t, srv, "run", k(t, "ctl-held"), "--wait", "200ms", "--", "touch", marker)
	wantCode(t, r, exitHeld)
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the command ran without the lock")
	}
}

// Two `lockctl run` on one key never run their commands at the same time.
func TestTwoRunsSerialise(t *testing.T) {
	srv := sharedServer(t)
	log := filepath.Join(t.TempDir(), "log")
	script := `echo "start $LOCKD_TOKEN" >> "$LOG"; sleep 0.5; echo "end $LOCKD_TOKEN" >> "$LOG"`
	var wg sync.WaitGroup
	codes := make([]int, 3)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := command(t, srv, "run", k(t, "ctl-serial"), "--ttl", "2s", "--wait", "30s", "--", "sh", "-c", script)
			cmd.Env = append(cmd.Env, "LOG="+log)
			cmd.Run()
			codes[i] = cmd.ProcessState.ExitCode()
		}()
	}
	wg.Wait()
	for i, c := range codes {
		if c != 0 {
			t.Fatalf("run %d exited %d", i, c)
		}
	}
	b, _ := os.ReadFile(log)
	lines := strings.Fields(strings.ReplaceAll(string(b), "\n", " "))
	if len(lines) != 12 {
		t.Fatalf("log %q: want 6 lines", b)
	}
	var last uint64
	for i := 0; i < len(lines); i += 4 {
		start, tok, end, tok2 := lines[i], lines[i+1], lines[i+2], lines[i+3]
		if start != "start" || end != "end" || tok != tok2 {
			t.Fatalf("commands overlapped:\n%s", b)
		}
		n, _ := strconv.ParseUint(tok, 10, 64)
		if n <= last {
			t.Fatalf("tokens not increasing:\n%s", b)
		}
		last = n
	}
}

// SIGTERM to lockctl reaches the child; lockctl exits with its status and
// releases the lock.
func TestRunForwardsSignals(t *testing.T) {
	srv := sharedServer(t)
	ready := filepath.Join(t.TempDir(), "ready")
	cmd := command(t, srv, "run", k(t, "ctl-signal"), "--ttl", "5s", "--", "sh", "-c",
		`trap 'exit 5' TERM; touch "$READY"; while :; do sleep 0.05; done`)
	cmd.Env = append(cmd.Env, "READY="+ready)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFile(t, ready)
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	if got := cmd.ProcessState.ExitCode(); got != 5 {
		t.Fatalf("exit %d, want the child's 5", got)
	}
	wantCode(t, lockctl(t, srv, "acquire", k(t, "ctl-signal"), "--ttl", "1s"), exitOK)
}

func waitFile(t *testing.T, path string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(path); err == nil {
			return
		}
	}
	t.Fatalf("%s never appeared", path)
}

// The lease is released out from under the command (with the lease id from
// its own environment): the next renew is refused (410). That is a known
// loss, so the command — which ignores SIGTERM — must be gone within
// refusedStopWindow of its SIGTERM, not after the long --grace that is meant
// for renewals that merely fail; lockctl exits with the lease-lost code.
func TestRunStopsChildWhenRenewRefused(t *testing.T) {
	srv := sharedServer(t)
	dir := t.TempDir()
	ticks, termed := filepath.Join(dir, "ticks"), filepath.Join(dir, "termed")
	// A grace far longer than the stop window and the slack below, so
	// waiting out the grace cannot pass for a prompt stop.
	const grace = 6 * time.Second
	cmd := command(t, srv, "run", k(t, "ctl-refused"), "--ttl", "15s", "--grace", grace.String(), "--", "sh", "-c",
		`trap 'date +%s%N > "$TERMED"' TERM; lockctl release >/dev/null; while :; do date +%s%N >> "$TICKS"; sleep 0.02; done`)
	cmd.Env = append(cmd.Env, "TICKS="+ticks, "TERMED="+termed)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Run()
	if got := cmd.ProcessState.ExitCode(); got != exitLeaseLost {
		t.Fatalf("exit %d, want %d (stderr: %s)", got, exitLeaseLost, stderr.String())
	}
	if !strings.Contains(stderr.String(), "lost") {
		t.Errorf("stderr does not say the lease was lost: %s", stderr.String())
	}
	termAt := readNanos(t, termed, "the command never saw SIGTERM")
	lastTick := readNanos(t, ticks, "the command never ticked")
	// Generous slack for a loaded machine, still far below the grace.
	const bound = refusedStopWindow + 2*time.Second
	if ran := lastTick.Sub(termAt); ran > bound {
		t.Fatalf("command ran %v after its SIGTERM, want at most %v (stop window %v, grace %v)", ran, bound, refusedStopWindow, grace)
	}
	t.Logf("command's last tick %v after its SIGTERM (stop window %v, grace %v)", lastTick.Sub(termAt), refusedStopWindow, grace)
}

// readNanos returns the last `date +%s%N` value written to path.
func readNanos(t *testing.T, path, missing string) time.Time {
	t.Helper()
	b, _ := os.ReadFile(path)
	f := strings.Fields(string(b))
	if len(f) == 0 {
		t.Fatal(missing)
	}
	ns, err := strconv.ParseInt(f[len(f)-1], 10, 64)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return time.Unix(0, ns)
}

// A command that leaves a process in the background and exits: when lockctl
// returns (and the lock is free for others) nothing of the command's process
// group is left running.
func TestRunKillsLeftoverProcessGroup(t *testing.T) {
	srv := sharedServer(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	cmd := command(t, srv, "run", k(t, "ctl-leftover"), "--ttl", "5s", "--", "sh", "-c",
		`sleep 30 >/dev/null 2>&1 & echo $! > "$PIDFILE"`)
	cmd.Env = append(cmd.Env, "PIDFILE="+pidFile)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("run: %v %s", err, out)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		t.Fatalf("pid file %q: %v", b, err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	// lockctl has sent SIGKILL before returning; the kernel may take a
	// moment to finish the process off.
	for deadline := time.Now().Add(10 * time.Second); alive(pid); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("background process %d of the command still runs after lockctl returned", pid)
		}
	}
}

// alive reports whether pid is a process that has not exited (a zombie
// waiting for its parent counts as exited).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z' && s[i+2] != 'X'
}

// lockd stops answering (SIGSTOP): renewals fail, and the command is
// stopped — SIGTERM ignored, so SIGKILL — before the deadline counted from
// the last renew that could have succeeded.
func TestRunStopsChildBeforeDeadlineWhenServerUnreachable(t *testing.T) {
	srv := lockdtest.Start(t, nil)
	dir := t.TempDir()
	ticks, ready := filepath.Join(dir, "ticks"), filepath.Join(dir, "ready")
	const ttl = 2 * time.Second
	cmd := command(t, srv, "run", k(t, "ctl-paused"), "--ttl", ttl.String(), "--", "sh", "-c",
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
	exited := time.Now()
	if got := cmd.ProcessState.ExitCode(); got != exitLeaseLost {
		t.Fatalf("exit %d, want %d (stderr: %s)", got, exitLeaseLost, stderr.String())
	}
	// No renew sent after `paused` can have succeeded, so the lease's
	// deadline is at most paused+ttl: the command must be gone by then.
	b, _ := os.ReadFile(ticks)
	f := strings.Fields(string(b))
	if len(f) == 0 {
		t.Fatal("command never ticked")
	}
	ns, _ := strconv.ParseInt(f[len(f)-1], 10, 64)
	lastTick := time.Unix(0, ns)
	if deadline := paused.Add(ttl); !lastTick.Before(deadline) {
		t.Fatalf("command still ran at %v, after the deadline %v", lastTick, deadline)
	}
	t.Logf("paused at 0, command's last tick at %v, lockctl exited at %v (ttl %v)", lastTick.Sub(paused), exited.Sub(paused), ttl)
}

// SIGINT while waiting for the lock ends the wait with 128+SIGINT, and the
// command never runs.
func TestRunInterruptedWhileWaiting(t *testing.T) {
	srv := sharedServer(t)
	wantCode(t, lockctl(t, srv, "acquire", k(t, "ctl-interrupt"), "--ttl", "30s"), exitOK)
	marker := filepath.Join(t.TempDir(), "ran")
	cmd := command(t, srv, "run", k(t, "ctl-interrupt"), "--wait", "1m", "--", "touch", marker)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait until lockctl is queued (when the server counts waiters; at
	// most 5 s, long after lockctl's handlers are installed), then
	// interrupt.
	c, _ := client.New(srv.URL, nil)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if st, err := c.Inspect(t.Context(), k(t, "ctl-interrupt")); err == nil && st.Waiters > 0 {
			break
		}
	}
	cmd.Process.Signal(syscall.SIGINT)
	cmd.Wait()
	if got := cmd.ProcessState.ExitCode(); got != 128+int(syscall.SIGINT) {
		t.Fatalf("exit %d, want %d", got, 128+int(syscall.SIGINT))
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the command ran without the lock")
	}
}

// keys gives each test run its own keys (suffix per *testing.T), so that
// -count=N reruns on a shared server do not meet their own leftovers.
var keys sync.Map

func k(t *testing.T, name string) string {
	v, _ := keys.LoadOrStore(t, strconv.FormatInt(time.Now().UnixNano()%1e9, 36))
	return name + "-" + v.(string)
}

// With an auth file, lockctl sends its bearer token (--token or
// $LOCKD_TOKEN_AUTH), and a refusal exits with the "not authorized" code.
func TestAuthToken(t *testing.T) {
	authFile := filepath.Join(t.TempDir(), "tokens.json")
	const secret = "team-a-secret-0123456789"
	if err := os.WriteFile(authFile, []byte(`{"tokens":[{"name":"team-a","token":"`+secret+`","prefixes":["a:"],"rights":["lock","read"]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := lockdtest.Start(t, &lockdtest.Options{Args: []string{"--auth-file", authFile}})

	wantCode(t, lockctl(t, srv, "acquire", "a:job"), exitDenied) // no token
	wantCode(t, lockctl(t, srv, "--token", "wrong-token-0123456789", "acquire", "a:job"), exitDenied)
	wantCode(t, lockctl(t, srv, "--token", secret, "acquire", "b:job"), exitDenied) // outside the prefix
	wantCode(t, lockctl(t, srv, "--token", secret, "acquire", "a:job", "--ttl", "5s"), exitOK)

	cmd := command(t, srv, "run", "a:run", "--", "true")
	cmd.Env = append(cmd.Env, "LOCKD_TOKEN_AUTH="+secret)
	if err := cmd.Run(); err != nil {
		t.Fatalf("run with $LOCKD_TOKEN_AUTH: %v", err)
	}
}

// One lease id in 64 starts with '-' (base64url): renew and release must
// take it as the LEASE_ID, not as an unknown flag. The server's 410 for
// this unknown lease shows it got there.
func TestLeaseIDStartingWithDash(t *testing.T) {
	srv := sharedServer(t)
	const id = "-AAAAAAAAAAAAAAAAAAAAA"
	wantCode(t, lockctl(t, srv, "renew", k(t, "ctl-dash"), id), exitLeaseLost)
	wantCode(t, lockctl(t, srv, "renew", k(t, "ctl-dash"), id, "--ttl", "5s"), exitLeaseLost)
	wantCode(t, lockctl(t, srv, "release", k(t, "ctl-dash"), id+".suffix"), exitLeaseLost)
	wantCode(t, lockctl(t, srv, "--json", "release", k(t, "ctl-dash"), id), exitLeaseLost)
	// A mistyped flag is still a usage error, not a lease id.
	wantCode(t, lockctl(t, srv, "renew", k(t, "ctl-dash"), id, "--tll", "5s"), exitUsage)
}

// Renewals that merely fail (lockd paused) are not a refusal: the lease may
// still be valid, so the command keeps its --grace after SIGTERM rather
// than the short window of a refused renew.
func TestRunKeepsGraceWhenRenewalsFail(t *testing.T) {
	srv := lockdtest.Start(t, nil)
	dir := t.TempDir()
	ticks, termed, ready := filepath.Join(dir, "ticks"), filepath.Join(dir, "termed"), filepath.Join(dir, "ready")
	const grace = 3 * time.Second
	cmd := command(t, srv, "run", k(t, "ctl-grace"), "--ttl", "10s", "--grace", grace.String(), "--", "sh", "-c",
		`trap 'date +%s%N > "$TERMED"' TERM; touch "$READY"; while :; do date +%s%N >> "$TICKS"; sleep 0.02; done`)
	cmd.Env = append(cmd.Env, "READY="+ready, "TICKS="+ticks, "TERMED="+termed)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFile(t, ready)
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Resume() })
	cmd.Wait()
	if got := cmd.ProcessState.ExitCode(); got != exitLeaseLost {
		t.Fatalf("exit %d, want %d (stderr: %s)", got, exitLeaseLost, stderr.String())
	}
	termAt := readNanos(t, termed, "the command never saw SIGTERM")
	lastTick := readNanos(t, ticks, "the command never ticked")
	// A lower bound: a slow machine only makes the command run longer.
	if ran, want := lastTick.Sub(termAt), grace/2; ran < want {
		t.Fatalf("command ran %v after its SIGTERM, want at least %v of its %v grace", ran, want, grace)
	}
	t.Logf("command's last tick %v after its SIGTERM (grace %v)", lastTick.Sub(termAt), grace)
}

// Running the same acquire again with --idempotency-key (a script that
// cannot tell whether the first run got the lock) gets the same grant; once
// that grant ended it exits with the lease-lost code, never a fresh grant.
func TestAcquireIdempotencyKeyRerun(t *testing.T) {
	srv := sharedServer(t)
	key := k(t, "ctl-idem")
	var grants [2]struct {
		LeaseID string `json:"lease_id"`
		Token   uint64 `json:"token"`
	}
	for i := range grants {
		r := lockctl(t, srv, "acquire", key, "--ttl", "30s", "--idempotency-key", "job-7", "--json")
		wantCode(t, r, exitOK)
		if err := json.Unmarshal([]byte(r.stdout), &grants[i]); err != nil {
			t.Fatalf("acquire --json: %v\n%s", err, r.stdout)
		}
	}
	if grants[1] != grants[0] || grants[0].LeaseID == "" {
		t.Fatalf("second run got %+v, want the first run's grant %+v", grants[1], grants[0])
	}
	wantCode(t, lockctl(t, srv, "release", key, grants[0].LeaseID), exitOK)
	wantCode(t, lockctl(t, srv, "acquire", key, "--ttl", "30s", "--idempotency-key", "job-7"), exitLeaseLost)
	wantCode(t, lockctl(t, srv, "acquire", key, "--ttl", "30s", "--idempotency-key", "bad key"), exitInvalid)
}

// The README's shell flow, line for line, through a real sh (dash on
// Debian) and bash: the lines acquire prints are exported, so the lockctl
// the script runs next finds the lease. The test reads the lines out of
// README.md, so the README cannot drift from what is tested.
func TestReadmeShellFlow(t *testing.T) {
	srv := sharedServer(t)
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var acquireLine, renewLine, releaseLine string
	for _, l := range strings.Split(string(readme), "\n") {
		l, _, _ = strings.Cut(l, "   #") // the README's comments
		switch l = strings.TrimSpace(l); {
		case acquireLine == "" && strings.HasPrefix(l, `eval "$(lockctl acquire deploy`):
			acquireLine = l
		case renewLine == "" && l == "lockctl renew":
			renewLine = l
		case releaseLine == "" && l == "lockctl release":
			releaseLine = l
		}
	}
	if acquireLine == "" || renewLine == "" || releaseLine == "" {
		t.Fatalf("README.md has no shell flow to test (eval/renew/release lines): %q %q %q", acquireLine, renewLine, releaseLine)
	}
	key := k(t, "ctl-readme")
	acquireLine = strings.Replace(acquireLine, "acquire deploy", "acquire "+key, 1)
	script := strings.Join([]string{"set -e", acquireLine, renewLine, releaseLine, `test -n "$LOCKD_LEASE_ID"`}, "\n")
	for _, sh := range []string{"sh", "bash"} {
		if _, err := exec.LookPath(sh); err != nil {
			t.Fatalf("%s: %v", sh, err)
		}
		cmd := exec.Command(sh, "-c", script)
		cmd.Env = append(os.Environ(), "LOCKD_ADDR="+srv.Addr, "PATH="+filepath.Dir(lockctlBin)+":"+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("%s -c %q: %v\n%s", sh, script, err, out)
		}
	}
	if code, st := lockctl(t, srv, "status", key), ""; code.code != exitOK || !strings.Contains(code.stdout, "free") {
		t.Errorf("status after the script's release: %d %s%s", code.code, code.stdout, st)
	}
}

// Every command prints its help on -h and --help and exits 0.
func TestHelpExitsZero(t *testing.T) {
	srv := sharedServer(t)
	for _, cmd := range []string{"run", "elect", "observe", "watch", "acquire", "renew", "release", "status", "list"} {
		for _, h := range []string{"-h", "--help"} {
			r := lockctl(t, srv, cmd, h)
			wantCode(t, r, exitOK)
			if !strings.Contains(r.stdout, "usage: lockctl") || !strings.Contains(r.stdout, "flags of "+cmd) {
				t.Errorf("lockctl %s %s printed %q, want its usage on stdout", cmd, h, r.stdout)
			}
		}
	}
}

// `lockctl run -n 2` runs at most two commands at once, each with its own
// LOCKD_SLOT; a full semaphore without --wait exits with the held code.
func TestRunSemaphore(t *testing.T) {
	srv := sharedServer(t)
	key := k(t, "ctl-sem")
	log := filepath.Join(t.TempDir(), "log")
	script := `echo "start $LOCKD_SLOT $LOCKD_TOKEN" >> "$LOG"; sleep 0.5; echo "end $LOCKD_SLOT $LOCKD_TOKEN" >> "$LOG"`
	var wg sync.WaitGroup
	codes := make([]int, 4)
	for i := range codes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := command(t, srv, "run", "-n", "2", key, "--ttl", "3s", "--wait", "30s", "--", "sh", "-c", script)
			cmd.Env = append(cmd.Env, "LOG="+log)
			cmd.Run()
			codes[i] = cmd.ProcessState.ExitCode()
		}()
	}
	wg.Wait()
	for i, c := range codes {
		if c != 0 {
			t.Fatalf("run %d exited %d", i, c)
		}
	}
	b, _ := os.ReadFile(log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 8 {
		t.Fatalf("log %q: want 8 lines", b)
	}
	inside, busy := 0, map[string]bool{}
	for _, line := range lines {
		f := strings.Fields(line)
		if len(f) != 3 || (f[1] != "0" && f[1] != "1") {
			t.Fatalf("line %q: want start|end, a slot in 0..1 and a token", line)
		}
		switch f[0] {
		case "start":
			inside++
			if busy[f[1]] {
				t.Fatalf("two commands in slot %s at once:\n%s", f[1], b)
			}
			busy[f[1]] = true
		case "end":
			inside--
			busy[f[1]] = false
		}
		if inside > 2 {
			t.Fatalf("%d commands at once under -n 2:\n%s", inside, b)
		}
	}

	wantCode(t, lockctl(t, srv, "run", "-n", "1", k(t, "ctl-sem1"), "--ttl", "10s", "--", "sleep", "0"), exitOK)
	ready := filepath.Join(t.TempDir(), "ready")
	hold := command(t, srv, "run", "-n", "1", k(t, "ctl-sem1"), "--ttl", "10s", "--", "sh", "-c", `touch "$READY"; sleep 3`)
	hold.Env = append(hold.Env, "READY="+ready)
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hold.Wait() })
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(ready); err == nil {
			break // hold has its permit
		}
		if time.Now().After(deadline) {
			t.Fatal("the holding run never started its command")
		}
	}
	marker := filepath.Join(t.TempDir(), "ran")
	wantCode(t, lockctl(t, srv, "run", "-n", "1", k(t, "ctl-sem1"), "--", "touch", marker), exitHeld)
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("the command ran without a permit")
	}
}
