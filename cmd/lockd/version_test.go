package main

import (
	"bytes"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lockd/lockd/internal/lockdtest"
)

// lockd --version prints one line and starts nothing, in process and as the
// built binary; /healthz and lockd_build_info say the same version.
func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if err := run(t.Context(), []string{"--version"}, func(string) string { return "" }, &out, io.Discard); err != nil {
		t.Fatalf("run --version: %v", err)
	}
	if line := out.String(); !strings.HasPrefix(line, "lockd ") || strings.Count(line, "\n") != 1 {
		t.Errorf("--version printed %q, want one line starting with \"lockd \"", line)
	}
	bin := lockdtest.Binary(t)
	got, err := exec.Command(bin, "--version").Output()
	if err != nil {
		t.Fatalf("%s --version: %v", bin, err)
	}
	if !strings.HasPrefix(string(got), "lockd ") {
		t.Errorf("%s --version printed %q", bin, got)
	}

	base, _, _ := startInProcess(t, map[string]string{
		"LOCKD_LISTEN": "127.0.0.1:0", "LOCKD_DATA_DIR": filepath.Join(t.TempDir(), "data"),
		"LOCKD_EMBED_ETCD_CLIENT_URL": freeURL(t), "LOCKD_EMBED_ETCD_PEER_URL": freeURL(t),
	})
	code, body := get(t, base+"/healthz")
	if code != 200 || body["version"] == nil || body["version"] == "" {
		t.Errorf("/healthz: %d %v, want its version", code, body)
	}
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(m), `lockd_build_info{goversion="go`) || !strings.Contains(string(m), `version="`+body["version"].(string)+`"} 1`) {
		t.Errorf("/metrics has no lockd_build_info matching /healthz's version %v", body["version"])
	}
}
