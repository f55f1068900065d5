package lease

import (
	"testing"
	"time"
)

func TestNewIDIsAValidUnguessableID(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 1000; i++ {
		id := NewID()
		if len(id) != 22 || !ValidID(id) {
			t.Fatalf("NewID() = %q, want 22 URL-safe characters", id)
		}
		if seen[id] {
			t.Fatalf("NewID() repeated %q", id)
		}
		seen[id] = true
	}
}

func TestValidID(t *testing.T) {
	for id, want := range map[string]bool{
		"AAAAAAAAAAAAAAAAAAAAAA":      true,
		"abc.123-_~":                  true,
		"":                            false,
		"a/b":                         false,
		"a b":                         false,
		"é":                           false,
		string(make([]byte, 129)):     false,
		"x" + string(make([]byte, 0)): true,
	} {
		if got := ValidID(id); got != want {
			t.Errorf("ValidID(%q) = %v, want %v", id, got, want)
		}
	}
	long := make([]byte, MaxIDLen)
	for i := range long {
		long[i] = 'a'
	}
	if !ValidID(string(long)) || ValidID(string(long)+"a") {
		t.Errorf("the length limit is not %d bytes", MaxIDLen)
	}
}

func TestDeadlineAndFormat(t *testing.T) {
	now := time.Date(2026, 11, 25, 8, 0, 0, 123456789, time.FixedZone("x", 3600))
	d := Deadline(now, 1500*time.Millisecond)
	if got, want := Format(d), "2026-11-25T07:00:01.623Z"; got != want {
		t.Errorf("Format(Deadline) = %s, want %s (UTC, milliseconds, truncated)", got, want)
	}
	if Format(time.UnixMilli(0)) != "1970-01-01T00:00:00.000Z" {
		t.Errorf("Format keeps zero milliseconds: %s", Format(time.UnixMilli(0)))
	}
}

func TestClockPolicy(t *testing.T) {
	c := SystemClock(time.Second)
	now := c.Now()
	for _, tc := range []struct {
		deadline       time.Time
		valid, overdue bool
	}{
		{now.Add(time.Minute), true, false},
		{now.Add(-time.Millisecond), false, false}, // the holder's window is over; nobody else's yet
		{now.Add(-999 * time.Millisecond), false, false},
		{now.Add(-1001 * time.Millisecond), false, true},
	} {
		if got := c.Valid(tc.deadline); got != tc.valid {
			t.Errorf("Valid(now%+v) = %v, want %v", tc.deadline.Sub(now), got, tc.valid)
		}
		if got := c.Overdue(tc.deadline); got != tc.overdue {
			t.Errorf("Overdue(now%+v) = %v, want %v", tc.deadline.Sub(now), got, tc.overdue)
		}
	}
	ahead := c.Shifted(300 * time.Millisecond)
	if d := ahead.Now().Sub(time.Now()); d < 250*time.Millisecond || d > 350*time.Millisecond {
		t.Errorf("Shifted(300ms).Now() is %v from the machine's clock", d)
	}
	for off, want := range map[time.Duration]bool{0: false, 500 * time.Millisecond: false, 501 * time.Millisecond: true, -501 * time.Millisecond: true} {
		if got := c.OffsetTooLarge(off); got != want {
			t.Errorf("OffsetTooLarge(%v) under a 1s bound = %v, want %v", off, got, want)
		}
	}
}
