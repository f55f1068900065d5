package testserver

import (
	"os"
	"testing"
)

// Required reports whether a missing server or tool must fail a test
// instead of skipping it: LOCKD_REQUIRE_SERVERS=1, as CI sets.
func Required() bool { return os.Getenv("LOCKD_REQUIRE_SERVERS") == "1" }

// Missing ends a test that needs what this machine lacks (why says what,
// and how to install it): a skip on a laptop, a failure in CI (Required).
// This is the one place that policy lives.
func Missing(tb testing.TB, why string) {
	tb.Helper()
	if Required() {
		tb.Fatalf("%s (LOCKD_REQUIRE_SERVERS=1)", why)
	}
	tb.Skip(why)
}
