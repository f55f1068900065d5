package main

import (
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
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
