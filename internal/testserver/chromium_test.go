package testserver

import "testing"

// LOCKD_CHROMIUM wins over PATH, and a wrong one is an error, not a
// silent fallback to another browser.
func TestChromiumPathFromEnv(t *testing.T) {
	t.Setenv("LOCKD_CHROMIUM", "/nonexistent/chromium")
	if p, err := ChromiumPath(); err == nil {
		t.Fatalf("ChromiumPath() = %q with LOCKD_CHROMIUM pointing nowhere, want an error", p)
	}
}
