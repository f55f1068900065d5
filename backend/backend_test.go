package backend

import "testing"

func TestStateCursorRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		held  bool
		token uint64
	}{{false, 0}, {true, 1}, {false, 42}, {true, 1<<64 - 1}} {
		c := StateCursor(tc.held, tc.token)
		held, token, ok := ParseStateCursor(c)
		if !ok || held != tc.held || token != tc.token {
			t.Errorf("ParseStateCursor(%q) = %v, %d, %v, want %v, %d, true", c, held, token, ok, tc.held, tc.token)
		}
	}
	for _, bad := range []string{"", "h.", "x.1", "h.01", "h.-1", "f.1.2", "h.18446744073709551616", "not a cursor\n"} {
		if _, _, ok := ParseStateCursor(bad); ok {
			t.Errorf("ParseStateCursor(%q) ok, want refused", bad)
		}
	}
}
