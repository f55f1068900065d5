package main

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

// The console is on by default at /ui/ and announced at start; --ui=false
// (LOCKD_UI=false) makes /ui/ the API's 404 problem.
func TestUIFlag(t *testing.T) {
	for _, c := range []struct {
		ui     string
		status int
	}{{"", http.StatusOK}, {"false", http.StatusNotFound}} {
		t.Run("ui="+c.ui, func(t *testing.T) {
			env := map[string]string{
				"LOCKD_LISTEN":                "127.0.0.1:0",
				"LOCKD_DATA_DIR":              filepath.Join(t.TempDir(), "data"),
				"LOCKD_EMBED_ETCD_CLIENT_URL": freeURL(t),
				"LOCKD_EMBED_ETCD_PEER_URL":   freeURL(t),
				"LOCKD_UI":                    c.ui,
			}
			base, out, stop := startInProcess(t, env)
			defer stop()
			res, err := http.Get(base + "/ui/")
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			if res.StatusCode != c.status {
				t.Fatalf("GET /ui/: %d, want %d", res.StatusCode, c.status)
			}
			announced := strings.Contains(out.String(), "web console: "+base+"/ui/")
			if want := c.status == http.StatusOK; announced != want {
				t.Errorf("start-up lines %q announce the console: %v, want %v", out.String(), announced, want)
			}
			if c.status == http.StatusOK {
				if got := res.Header.Get("Content-Security-Policy"); !strings.Contains(got, "script-src 'self'") {
					t.Errorf("CSP = %q", got)
				}
				return
			}
			var p struct{ Code string }
			_ = json.NewDecoder(res.Body).Decode(&p)
			if p.Code != "not_found" {
				t.Errorf("GET /ui/ with --ui=false: code %q, want not_found", p.Code)
			}
		})
	}
}
