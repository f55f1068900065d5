package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func freeURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return "http://" + l.Addr().String()
}

var listenRE = regexp.MustCompile(`lockd listening on (https?://\S+) `)

// lineWriter hands the address lockd prints to whoever waits for it.
type lineWriter struct {
	mu   sync.Mutex
	buf  strings.Builder
	addr chan string
	sent bool
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if m := listenRE.FindStringSubmatch(w.buf.String()); m != nil && !w.sent {
		w.sent = true
		w.addr <- m[1]
	}
	return len(p), nil
}

func (w *lineWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func post(t *testing.T, url, body string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	var m map[string]any
	data, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(data, &m)
	return resp.StatusCode, m
}

func get(t *testing.T, url string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

// run serves on port 0 with its flags from the environment, and stops
// cleanly when its context ends.
func TestRunInProcess(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{
		"LOCKD_LISTEN":                "127.0.0.1:0",
		"LOCKD_DATA_DIR":              filepath.Join(dir, "data"),
		"LOCKD_EMBED_ETCD_CLIENT_URL": freeURL(t),
		"LOCKD_EMBED_ETCD_PEER_URL":   freeURL(t),
	}
	base, out, stop := startInProcess(t, env)
	if !strings.Contains(out.String(), "try: curl") {
		t.Errorf("start-up lines = %q, want an example curl", out.String())
	}
	code, g := post(t, base+"/v1/locks/e2e/acquire", `{"ttl_ms": 5000, "owner": "in-process"}`)
	if code != 200 {
		t.Fatalf("acquire: %d %v", code, g)
	}
	id := g["lease_id"].(string)
	if code, r := post(t, base+"/v1/locks/e2e/renew", `{"lease_id": "`+id+`"}`); code != 200 || r["token"] != g["token"] {
		t.Fatalf("renew: %d %v", code, r)
	}
	if code, r := post(t, base+"/v1/locks/e2e/release", `{"lease_id": "`+id+`"}`); code != 204 {
		t.Fatalf("release: %d %v", code, r)
	}
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
}

// --audit writes a line per grant, expiry and release; the expiry line names
// the grant that ran out by key, owner and token (the replica that removed it
// writes it).
func TestAuditLog(t *testing.T) {
	dir := t.TempDir()
	env := map[string]string{
		"LOCKD_LISTEN":                "127.0.0.1:0",
		"LOCKD_AUDIT":                 "true",
		"LOCKD_DATA_DIR":              filepath.Join(dir, "data"),
		"LOCKD_EMBED_ETCD_CLIENT_URL": freeURL(t),
		"LOCKD_EMBED_ETCD_PEER_URL":   freeURL(t),
	}
	stderr := &lineWriter{addr: make(chan string, 1)}
	base, _, stop := startLogging(t, env, stderr)
	code, g := post(t, base+"/v1/locks/audited/acquire", `{"ttl_ms": 300, "owner": "gone"}`)
	if code != 200 {
		t.Fatalf("acquire: %d %v", code, g)
	}
	code, n := post(t, base+"/v1/locks/audited/acquire", `{"ttl_ms": 5000, "wait_ms": 10000, "owner": "next"}`)
	if code != 200 {
		t.Fatalf("waiting acquire: %d %v", code, n)
	}
	if code, r := post(t, base+"/v1/locks/audited/release", `{"lease_id": "`+n["lease_id"].(string)+`"}`); code != 204 {
		t.Fatalf("release: %d %v", code, r)
	}
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}

	var events []map[string]any
	for _, line := range strings.Split(stderr.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["log"] == "audit" {
			events = append(events, m)
		}
	}
	want := []map[string]any{
		{"event": "grant", "key": "audited", "owner": "gone", "token": g["token"]},
		{"event": "expired", "key": "audited", "owner": "gone", "token": g["token"]},
		{"event": "grant", "key": "audited", "owner": "next", "token": n["token"]},
		{"event": "release", "key": "audited"},
	}
	if len(events) != len(want) {
		t.Fatalf("audit lines:\n%s\nwant %d of them", stderr.String(), len(want))
	}
	for i, w := range want {
		for k, v := range w {
			if events[i][k] != v {
				t.Errorf("audit line %d: %s = %v, want %v (line %v)", i, k, events[i][k], v, events[i])
			}
		}
	}
	for _, id := range []any{g["lease_id"], n["lease_id"]} {
		if strings.Contains(stderr.String(), id.(string)) {
			t.Errorf("the audit log shows a lease id")
		}
	}
}

// startInProcess runs lockd's run with env as its environment and returns
// the URL it serves, what it printed, and a stop that ends it and returns
// run's error.
func startInProcess(t *testing.T, env map[string]string) (base string, out *lineWriter, stop func() error) {
	t.Helper()
	return startLogging(t, env, io.Discard)
}

// startLogging is startInProcess with lockd's stderr (its log and audit
// lines) written to stderr.
func startLogging(t *testing.T, env map[string]string, stderr io.Writer) (base string, out *lineWriter, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	out = &lineWriter{addr: make(chan string, 1)}
	done := make(chan error, 1)
	go func() { done <- run(ctx, nil, func(k string) string { return env[k] }, out, stderr) }()
	var once sync.Once
	var stopErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(30 * time.Second):
				stopErr = fmt.Errorf("run did not stop 30s after its context ended")
			}
		})
		return stopErr
	}
	t.Cleanup(func() { _ = stop() })
	select {
	case base = <-out.addr:
	case err := <-done:
		t.Fatalf("run ended early: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatalf("lockd did not say where it listens; printed %q", out.String())
	}
	return base, out, stop
}

func TestFlagsFromEnvAndHelp(t *testing.T) {
	c, err := parseFlags([]string{"--backend", "zk"}, func(k string) string {
		return map[string]string{"LOCKD_BACKEND": "redis", "LOCKD_ZK_ROOT": "/x", "LOCKD_ZK_SESSION_TIMEOUT": "3s"}[k]
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.backend != "zk" || c.zk.c.Root != "/x" || c.zk.c.SessionTimeout != 3*time.Second {
		t.Errorf("config = %+v, want the flag to win over env and env to set the rest", c)
	}
	if _, err := parseFlags(nil, func(k string) string {
		if k == "LOCKD_ZK_SESSION_TIMEOUT" {
			return "soon"
		}
		return ""
	}, io.Discard); err == nil || !strings.Contains(err.Error(), "LOCKD_ZK_SESSION_TIMEOUT") {
		t.Errorf("a bad env value gave %v, want an error naming the variable", err)
	}
	var help strings.Builder
	if _, err := parseFlags([]string{"--help"}, func(string) string { return "" }, &help); err == nil {
		t.Errorf("--help gave no error")
	}
	for _, want := range []string{"--listen", "LOCKD_LISTEN", "--etcd-endpoints", "LOCKD_EMBED_ETCD_CLIENT_URL", "--zk-servers", "--redis-addrs"} {
		if !strings.Contains(help.String(), want) {
			t.Errorf("--help lacks %s", want)
		}
	}
	if err := run(t.Context(), []string{"--backend", "nope", "--listen", "127.0.0.1:0"}, func(string) string { return "" }, io.Discard, io.Discard); err == nil {
		t.Errorf("an unknown backend started")
	}
}

// proc is a real lockd process.
type proc struct {
	cmd  *exec.Cmd
	base string
}

var buildOnce sync.Once
var binPath string

func lockdBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "lockd-bin-")
		if err != nil {
			t.Fatal(err)
		}
		binPath = filepath.Join(dir, "lockd")
		if out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
	})
	return binPath
}

func start(t *testing.T, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(lockdBinary(t), append([]string{"--listen", "127.0.0.1:0"}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd}
	t.Cleanup(func() { p.kill(); _ = cmd.Wait() })
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if m := listenRE.FindStringSubmatch(sc.Text() + " "); m != nil {
				addr <- m[1]
			}
		}
	}()
	select {
	case p.base = <-addr:
	case <-time.After(60 * time.Second):
		t.Fatalf("lockd %v did not start", args)
	}
	return p
}

func (p *proc) kill() { _ = p.cmd.Process.Signal(syscall.SIGKILL) }

// A lockd killed with SIGKILL and started again on its data dir honours the
// lease it granted, and the next token is larger; a second replica over the
// first one's embedded etcd sees the same lock.
func TestKillRestartAndSecondReplica(t *testing.T) {
	dir := t.TempDir()
	clientURL, peerURL := freeURL(t), freeURL(t)
	args := []string{"--data-dir", dir, "--embed-etcd-client-url", clientURL, "--embed-etcd-peer-url", peerURL}
	first := start(t, args...)
	code, g := post(t, first.base+"/v1/locks/survivor/acquire", `{"ttl_ms": 60000, "owner": "before-kill"}`)
	if code != 200 {
		t.Fatalf("acquire: %d %v", code, g)
	}
	first.kill()
	_ = first.cmd.Wait()

	again := start(t, args...)
	code, r := post(t, again.base+"/v1/locks/survivor/renew", fmt.Sprintf(`{"lease_id": %q}`, g["lease_id"]))
	if code != 200 || r["token"] != g["token"] {
		t.Fatalf("renew after restart: %d %v, want 200 with token %v", code, r, g["token"])
	}

	replica := start(t, "--etcd-endpoints", strings.TrimPrefix(clientURL, "http://"))
	if code, st := get(t, replica.base+"/v1/locks/survivor"); code != 200 || st["held"] != true || st["owner"] != "before-kill" {
		t.Fatalf("the replica's inspection: %d %v, want held by before-kill", code, st)
	}
	if code, h := post(t, replica.base+"/v1/locks/survivor/acquire", `{}`); code != 409 || h["code"] != "lock_held" {
		t.Fatalf("the replica's acquire: %d %v, want 409 lock_held", code, h)
	}
	if code, _ := post(t, replica.base+"/v1/locks/survivor/release", fmt.Sprintf(`{"lease_id": %q}`, g["lease_id"])); code != 204 {
		t.Fatalf("release through the replica: %d", code)
	}
	code, n := post(t, again.base+"/v1/locks/survivor/acquire", `{}`)
	if code != 200 || n["token"].(float64) <= g["token"].(float64) {
		t.Fatalf("acquire after the restart: %d %v, want a token above %v", code, n, g["token"])
	}
}

// SIGTERM stops lockd promptly, waiters get shutting_down, and the lease
// runs on: after a restart it is still held.
func TestSigtermKeepsLeases(t *testing.T) {
	dir := t.TempDir()
	args := []string{"--data-dir", dir, "--embed-etcd-client-url", freeURL(t), "--embed-etcd-peer-url", freeURL(t)}
	p := start(t, args...)
	code, g := post(t, p.base+"/v1/locks/term/acquire", `{"ttl_ms": 60000}`)
	if code != 200 {
		t.Fatalf("acquire: %d", code)
	}
	waited := make(chan int, 1)
	go func() {
		resp, err := http.Post(p.base+"/v1/locks/term/acquire", "application/json", strings.NewReader(`{"wait_ms": 60000}`))
		if err != nil {
			waited <- -1
			return
		}
		var pr map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&pr)
		resp.Body.Close()
		if pr["code"] != "shutting_down" {
			waited <- -2
			return
		}
		waited <- resp.StatusCode
	}()
	time.Sleep(500 * time.Millisecond)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case code := <-waited:
		if code != 503 {
			t.Errorf("waiter got %d, want 503 shutting_down", code)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("the waiter was not answered after SIGTERM")
	}
	exited := make(chan error, 1)
	go func() { exited <- p.cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("lockd exited with %v after SIGTERM, want 0", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("lockd did not exit after SIGTERM")
	}
	p2 := start(t, args...)
	if code, st := get(t, p2.base+"/v1/locks/term"); code != 200 || st["held"] != true || st["token"] != g["token"] {
		t.Fatalf("after a SIGTERM stop and restart the lock is %v, want still held with token %v", st, g["token"])
	}
}
