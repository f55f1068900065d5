package ui

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func serveUI(t *testing.T, method, path string) *http.Response {
	t.Helper()
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-From", "api")
		w.WriteHeader(http.StatusTeapot)
	})
	rec := httptest.NewRecorder()
	With(api).ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	return rec.Result()
}

// The page, its script and its style are served with their types and the
// security headers; the page loads nothing inline and nothing from elsewhere.
func TestServesAssetsWithSecurityHeaders(t *testing.T) {
	for _, c := range []struct{ path, ctype, contains string }{
		{"/ui/", "text/html; charset=utf-8", `<script src="app.js" defer></script>`},
		{"/ui/index.html", "text/html; charset=utf-8", `<script src="app.js" defer></script>`},
		{"/ui/app.js", "text/javascript; charset=utf-8", "'use strict';"},
		{"/ui/app.css", "text/css; charset=utf-8", ":root"},
	} {
		res := serveUI(t, http.MethodGet, c.path)
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != http.StatusOK {
			t.Errorf("GET %s: status %d, want 200", c.path, res.StatusCode)
		}
		if got := res.Header.Get("Content-Type"); got != c.ctype {
			t.Errorf("GET %s: Content-Type %q, want %q", c.path, got, c.ctype)
		}
		if got := res.Header.Get("Content-Security-Policy"); got != ContentSecurityPolicy {
			t.Errorf("GET %s: CSP %q, want %q", c.path, got, ContentSecurityPolicy)
		}
		if got := res.Header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("GET %s: X-Content-Type-Options %q, want nosniff", c.path, got)
		}
		if !strings.Contains(string(body), c.contains) {
			t.Errorf("GET %s: body lacks %q", c.path, c.contains)
		}
	}
	for _, forbidden := range []string{"'unsafe-inline'", "'unsafe-eval'", "*", "http:", "https:"} {
		if strings.Contains(ContentSecurityPolicy, forbidden) {
			t.Errorf("CSP allows %s: %s", forbidden, ContentSecurityPolicy)
		}
	}
}

// No inline script, no inline handler, no style attribute (the CSP would
// block them, so the page would silently break), and no other origin.
func TestPageIsSelfContained(t *testing.T) {
	page := string(files["index.html"].body)
	for _, bad := range []string{"<script>", " onclick=", " onload=", " onsubmit=", " style=", "http://", "https://", "//cdn"} {
		if strings.Contains(page, bad) {
			t.Errorf("index.html contains %q", bad)
		}
	}
	for name, a := range files {
		for _, bad := range []string{"http://", "https://", "innerHTML", "eval(", "lease_id"} {
			if name != "index.html" && strings.Contains(string(a.body), bad) {
				t.Errorf("%s contains %q", name, bad)
			}
		}
	}
	if n := Size(); n == 0 || n > 64<<10 {
		t.Errorf("embedded assets are %d bytes; want some, and under 64 KiB", n)
	}
	t.Logf("embedded assets: %d bytes", Size())
}

func TestRedirectNotFoundAndMethods(t *testing.T) {
	res := serveUI(t, http.MethodGet, "/ui")
	if res.StatusCode != http.StatusMovedPermanently || res.Header.Get("Location") != "/ui/" {
		t.Errorf("GET /ui: %d Location %q, want 301 to /ui/", res.StatusCode, res.Header.Get("Location"))
	}
	for _, c := range []struct {
		method, path string
		status       int
		code         string
	}{
		{http.MethodGet, "/ui/nope.js", http.StatusNotFound, "not_found"},
		{http.MethodGet, "/ui/index.html/x", http.StatusNotFound, "not_found"},
		{http.MethodPost, "/ui/", http.StatusMethodNotAllowed, "method_not_allowed"},
	} {
		res := serveUI(t, c.method, c.path)
		var p struct{ Code string }
		_ = json.NewDecoder(res.Body).Decode(&p)
		if res.StatusCode != c.status || p.Code != c.code || res.Header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("%s %s: %d %q %q, want %d problem+json %q", c.method, c.path, res.StatusCode, res.Header.Get("Content-Type"), p.Code, c.status, c.code)
		}
	}
	// Everything else is the API's.
	for _, p := range []string{"/v1/locks", "/uix", "/"} {
		if res := serveUI(t, http.MethodGet, p); res.Header.Get("X-From") != "api" {
			t.Errorf("GET %s was not passed to the API", p)
		}
	}
}

// The README states the assets' size; it must be today's.
func TestReadmeStatesSize(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`embedded in the binary \(([0-9,]+) bytes`).FindSubmatch(readme)
	if m == nil {
		t.Fatal("README.md does not state the console's size")
	}
	n, _ := strconv.Atoi(strings.ReplaceAll(string(m[1]), ",", ""))
	if n != Size() {
		t.Errorf("README.md says the console is %d bytes; it is %d", n, Size())
	}
}
