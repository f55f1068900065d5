package testserver

import (
	"errors"
	"os"
	"os/exec"
	"testing"
)

// ErrChromiumMissing: no Chromium to drive the web console's browser tests.
var ErrChromiumMissing = errors.New("testserver: no chromium (or chromium-browser, google-chrome) on PATH and LOCKD_CHROMIUM unset")

// ChromiumPath finds a Chromium to run headless: $LOCKD_CHROMIUM, else
// Debian's chromium (or a Chrome) on PATH.
func ChromiumPath() (string, error) {
	if p := os.Getenv("LOCKD_CHROMIUM"); p != "" {
		return exec.LookPath(p)
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", ErrChromiumMissing
}

// Chromium is ChromiumPath for tests: without a browser the test is skipped,
// or fails when LOCKD_REQUIRE_SERVERS=1 (CI), as for the real servers.
func Chromium(tb testing.TB) string {
	tb.Helper()
	p, err := ChromiumPath()
	if err != nil {
		Missing(tb, err.Error()+"; install it with: apt-get install -y chromium")
	}
	return p
}
