// Package ui serves lockd's web console: one page and its script and style,
// embedded in the binary, that read the public v1 API from the browser.
//
// It only serves files. It never reads the backend, never sees a token (the
// page sends its token to the API itself) and holds no state, so it cannot
// show more than the API would answer the same browser.
package ui

import (
	"bytes"
	"embed"
	"encoding/json"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"time"
)

//go:embed assets
var assets embed.FS

// Prefix is where the console lives.
const Prefix = "/ui/"

// ContentSecurityPolicy lets the page load only its own script and style and
// talk only to the lockd that served it: no inline script, no other origin,
// no framing.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

type asset struct {
	body        []byte
	contentType string
}

var files = load()

func load() map[string]asset {
	types := map[string]string{
		".html": "text/html; charset=utf-8",
		".js":   "text/javascript; charset=utf-8",
		".css":  "text/css; charset=utf-8",
	}
	out := map[string]asset{}
	err := fs.WalkDir(assets, "assets", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := assets.ReadFile(p)
		if err != nil {
			return err
		}
		out[strings.TrimPrefix(p, "assets/")] = asset{body: b, contentType: types[path.Ext(p)]}
		return nil
	})
	if err != nil {
		panic("ui: embedded assets unreadable: " + err.Error())
	}
	return out
}

// Size is the total size in bytes of the embedded assets.
func Size() int {
	n := 0
	for _, a := range files {
		n += len(a.body)
	}
	return n
}

// started stands in for the files' modification time, so that browsers
// revalidate after an upgrade.
var started = time.Now()

// With serves the console under /ui/ (and redirects /ui there) and passes
// every other request to next.
func With(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ui" || strings.HasPrefix(r.URL.Path, Prefix) {
			serve(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func serve(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", ContentSecurityPolicy)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Cache-Control", "no-cache")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		problem(w, http.StatusMethodNotAllowed, "method_not_allowed", r.Method+" is not allowed on "+r.URL.Path)
		return
	}
	if r.URL.Path == "/ui" {
		http.Redirect(w, r, Prefix, http.StatusMovedPermanently)
		return
	}
	name := strings.TrimPrefix(r.URL.Path, Prefix)
	if name == "" {
		name = "index.html"
	}
	a, ok := files[name]
	if !ok {
		problem(w, http.StatusNotFound, "not_found", "no such file in the console: "+r.URL.Path)
		return
	}
	h.Set("Content-Type", a.contentType)
	http.ServeContent(w, r, name, started, bytes.NewReader(a.body))
}

// problem writes an RFC 9457 problem, as the API does.
func problem(w http.ResponseWriter, status int, code, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"type": "https://lockd.dev/problems/" + code, "title": http.StatusText(status), "status": status, "code": code, "detail": detail,
	})
}
