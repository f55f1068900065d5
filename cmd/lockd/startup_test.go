package main

import (
	"bytes"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lockd/lockd/internal/lockdtest"
)

// A bad --backend is reported before anything binds a port: with the API
// port taken, the error still names the flag.
func TestUnknownBackendBeforeListening(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	env := map[string]string{"LOCKD_LISTEN": l.Addr().String(), "LOCKD_BACKEND": "foo"}
	err = run(t.Context(), nil, func(k string) string { return env[k] }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), `unknown --backend "foo"`) {
		t.Fatalf("run --backend foo with its port taken: %v, want the unknown backend named", err)
	}
}

// A second lockd on the machine with the embedded etcd's ports taken is told
// what to do instead of only that a port is in use.
func TestSecondEmbeddedLockdIsToldWhatToDo(t *testing.T) {
	client, peer := freeURL(t), freeURL(t)
	startInProcess(t, map[string]string{
		"LOCKD_LISTEN": "127.0.0.1:0", "LOCKD_DATA_DIR": filepath.Join(t.TempDir(), "one"),
		"LOCKD_EMBED_ETCD_CLIENT_URL": client, "LOCKD_EMBED_ETCD_PEER_URL": peer,
	})
	env := map[string]string{
		"LOCKD_LISTEN": "127.0.0.1:0", "LOCKD_DATA_DIR": filepath.Join(t.TempDir(), "two"),
		"LOCKD_EMBED_ETCD_CLIENT_URL": client, "LOCKD_EMBED_ETCD_PEER_URL": peer,
	}
	err := run(t.Context(), nil, func(k string) string { return env[k] }, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--etcd-endpoints "+strings.TrimPrefix(client, "http://")) {
		t.Fatalf("second lockd on the same embedded etcd ports: %v, want a hint naming --etcd-endpoints", err)
	}
}

// An unreachable ZooKeeper fails the start within --zk-connect-timeout with
// one error naming the server and the cause, not a log line per attempt (the
// real binary: go-zookeeper logs through the process's standard logger).
func TestUnreachableZooKeeperFailsFast(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	cmd := exec.Command(lockdtest.Binary(t))
	cmd.Env = append(os.Environ(), "LOCKD_LISTEN=127.0.0.1:0", "LOCKD_BACKEND=zk", "LOCKD_ZK_SERVERS="+addr, "LOCKD_ZK_CONNECT_TIMEOUT=2s")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	err = cmd.Run()
	took := time.Since(start)
	if err == nil {
		t.Fatal("lockd started against no ZooKeeper")
	}
	last := strings.TrimSpace(stderr.String())
	if i := strings.LastIndexByte(last, '\n'); i >= 0 {
		last = last[i+1:]
	}
	if !strings.Contains(last, addr) || !strings.Contains(last, "refused") {
		t.Errorf("last line %q, want the error naming the server and the cause", last)
	}
	if took > 6*time.Second {
		t.Errorf("gave up after %v, want about the 2s --zk-connect-timeout", took)
	}
	if n := strings.Count(stderr.String(), "\n"); n > 3 {
		t.Errorf("%d lines on stderr, want the error and at most the start-up warnings:\n%s", n, stderr.String())
	}
}
