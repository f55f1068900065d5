package harness

import (
	"strings"
	"testing"
	"time"
)

func TestFIFOViolations(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	const wait, slack = time.Second, 250 * time.Millisecond
	acq := func(client, call, ret int, granted bool) histOp {
		return histOp{Kind: opAcquire, Client: client, Call: at(call), Return: at(ret), Granted: granted}
	}
	for _, tc := range []struct {
		name string
		h    []histOp
		want int64
	}{
		{"served in order", []histOp{acq(0, 0, 400, true), acq(1, 300, 500, true)}, 0},
		{"overtaken by 300 ms", []histOp{acq(0, 0, 500, true), acq(1, 300, 400, true)}, 1},
		{"within the slack", []histOp{acq(0, 0, 500, true), acq(1, 200, 400, true)}, 0},
		{"overtaken waiter timed out later", []histOp{acq(0, 0, 1000, false), acq(1, 300, 400, true)}, 1},
		{"waiter's own wait had ended", []histOp{acq(0, 0, 1200, false), acq(1, 300, 1100, true)}, 0},
		{"waiter vanished", []histOp{{Kind: opAcquire, Client: 0, Call: at(0), Return: at(900), Vanished: true}, acq(1, 300, 400, true)}, 0},
		{"waiter failed", []histOp{{Kind: opAcquire, Client: 0, Call: at(0), Return: at(900), Unknown: true}, acq(1, 300, 400, true)}, 0},
	} {
		n, _, first := fifoViolations(tc.h, wait, slack)
		if n != tc.want {
			t.Errorf("%s: %d violations, want %d", tc.name, n, tc.want)
		}
		if n > 0 && !strings.Contains(first, "client 1 was granted while client 0") {
			t.Errorf("%s: first violation %q does not name the clients", tc.name, first)
		}
	}
}

// TestUnfreed: a holder death that no grant followed is a lock never freed
// (before, it simply left no time-to-free sample, and the cell stayed green).
func TestUnfreed(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	h := []histOp{{Kind: opAcquire, Client: 0, Call: at(0), Return: at(1), Granted: true}}
	deaths := []death{{Client: 0, At: at(2)}}
	if got := unfreed(h, deaths, at(5000), 2*time.Second); got != 1 {
		t.Errorf("death never followed by a grant, run went on 5 s: unfreed = %d, want 1", got)
	}
	if got := unfreed(h, deaths, at(1000), 2*time.Second); got != 0 {
		t.Errorf("run ended 1 s after the death, limit 2 s: unfreed = %d, want 0 (cannot tell)", got)
	}
	h = append(h, histOp{Kind: opAcquire, Client: 1, Call: at(3), Return: at(900), Granted: true})
	if got := unfreed(h, deaths, at(5000), 2*time.Second); got != 0 {
		t.Errorf("another client granted after the death: unfreed = %d, want 0", got)
	}
}

// TestEvalChecksNamesWhatFailed: a red cell says which check failed, what
// was measured and the threshold; a check that does not apply is neither.
func TestEvalChecksNamesWhatFailed(t *testing.T) {
	c := CorrectnessCell{Attempts: 100, Granted: 100, Availability: 1, LongestUnavailMs: 4000,
		Fenced: ModeResult{Check: checkResult{Result: "linearizable"}}, TimeToFreeMs: []float64{900}}
	evalChecks(&c, checkInputs{TTL: time.Second, Wait: 2 * time.Second, Skew: time.Second, NoFIFO: "no queue"})
	if c.Pass {
		t.Fatalf("a 4 s outage with TTL 1 s and skew 1 s passed")
	}
	if got := c.Failed(); len(got) != 1 || got[0] != CheckOutage {
		t.Errorf("failed = %v, want [%s]", got, CheckOutage)
	}
	if len(c.Why) != 1 || !strings.Contains(c.Why[0], "4s") || !strings.Contains(c.Why[0], "≤ 3s") {
		t.Errorf("why = %q, want the measured 4s and the threshold ≤ 3s", c.Why)
	}
	if f := c.CheckOf(CheckFIFO); f == nil || f.Applies || !strings.Contains(f.NotApplicable, "no queue") {
		t.Errorf("FIFO check on a backend that does not promise it: %+v", f)
	}
	// The leadership workload's two checks and the primitive workloads'
	// three are added after they end.
	if want := len(CheckNames) - 2 - 3; len(c.Checks) != want {
		t.Errorf("%d checks, want %d", len(c.Checks), want)
	}
}

// TestFIFOCheckAllowsAFewLateRequests: one grant in 82 overtaking a waiter
// (a late request on a loaded machine) is green; one in eight is red.
func TestFIFOCheckAllowsAFewLateRequests(t *testing.T) {
	for _, tc := range []struct {
		violations, granted int64
		pass                bool
	}{{1, 82, true}, {4, 80, true}, {10, 80, false}} {
		c := CorrectnessCell{Attempts: tc.granted, Granted: tc.granted, Availability: 1, FIFOViolations: tc.violations,
			Fenced: ModeResult{Check: checkResult{Result: "linearizable"}}}
		evalChecks(&c, checkInputs{TTL: time.Second, Wait: 2 * time.Second, Skew: time.Second})
		if got := c.CheckOf(CheckFIFO).Pass; got != tc.pass {
			t.Errorf("%d of %d grants overtook a waiter: pass = %v, want %v", tc.violations, tc.granted, got, tc.pass)
		}
	}
}

// TestAvailabilitySetsOneRefusalAside: 14 of 15 is green (one honest
// timeout in a small cell), 13 of 15 and 90 of 100 are red.
func TestAvailabilitySetsOneRefusalAside(t *testing.T) {
	for _, tc := range []struct {
		granted, attempts int64
		pass              bool
	}{{14, 15, true}, {13, 15, false}, {95, 100, true}, {90, 100, false}, {0, 0, false}} {
		c := CorrectnessCell{Attempts: tc.attempts, Granted: tc.granted, Fenced: ModeResult{Check: checkResult{Result: "linearizable"}}}
		if tc.attempts > 0 {
			c.Availability = float64(tc.granted) / float64(tc.attempts)
		}
		evalChecks(&c, checkInputs{TTL: time.Second, Wait: 2 * time.Second, Skew: time.Second})
		if got := c.CheckOf(CheckAvailability).Pass; got != tc.pass {
			t.Errorf("%d of %d granted: pass = %v, want %v", tc.granted, tc.attempts, got, tc.pass)
		}
	}
}

// TestTokenOrderIsRealTime: a grant whose reply came back late (a paused
// replica held it) may carry a lower token than a grant that returned
// meanwhile, because the two acquires overlapped; a grant asked for after
// another returned must carry a higher token.
func TestTokenOrderIsRealTime(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	grant := func(call, ret int, token uint64) histOp {
		return histOp{Kind: opAcquire, Granted: true, Call: at(call), Return: at(ret), Token: token}
	}
	concurrent := []histOp{grant(0, 900, 5), grant(100, 200, 6), grant(300, 400, 7)}
	if n := tokenRegressions(concurrent); n != 0 {
		t.Errorf("held-back reply of an overlapping acquire: %d regressions, want 0", n)
	}
	sequential := []histOp{grant(0, 100, 6), grant(200, 300, 5)}
	if n := tokenRegressions(sequential); n != 1 {
		t.Errorf("token 5 asked for after token 6 returned: %d regressions, want 1", n)
	}
}

// The report says when the longest outage began, so that it can be read
// against the fault timeline.
func TestLongestGapSaysWhen(t *testing.T) {
	t0 := time.Now()
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	h := []histOp{
		{Kind: opAcquire, Granted: true, Return: at(1)},
		{Kind: opAcquire, Granted: true, Return: at(2)},
		{Kind: opAcquire, Unknown: true, Return: at(5)}, // not a grant
		{Kind: opAcquire, Granted: true, Return: at(9)},
	}
	d, from := longestGapFrom(h, t0, at(10))
	if d != 7*time.Second || !from.Equal(at(2)) {
		t.Errorf("longest gap = %s from %s, want 7s from 2s", d, from.Sub(t0))
	}
}

// A store that itself stopped answering (a lost quorum) is a fair outage
// while it lasts: the limit grows by that silence, not further, and a
// silence elsewhere in the run buys nothing.
func TestOutageAllowsTheStoresOwnSilence(t *testing.T) {
	for _, tc := range []struct {
		silent, window time.Duration
		outageMs       float64
		pass           bool
	}{
		{0, 0, 4000, false},                             // lockd down 4 s with the store fine: red (limit 3 s)
		{5 * time.Second, 0, 7500, true},                // the store silent 5 s of a 7.5 s outage: 5 + 3 s allowed
		{5 * time.Second, 0, 8500, false},               // ... but not 8.5 s
		{2 * time.Second, 4 * time.Second, 7500, false}, // the longer of fault window and silence, not both
	} {
		c := CorrectnessCell{Attempts: 100, Granted: 100, Availability: 1, LongestUnavailMs: tc.outageMs,
			Fenced: ModeResult{Check: checkResult{Result: "linearizable"}}}
		evalChecks(&c, checkInputs{TTL: time.Second, Wait: 2 * time.Second, Skew: time.Second, NoFIFO: "no queue", StoreSilent: tc.silent, FaultWindow: tc.window})
		o := c.CheckOf(CheckOutage)
		if o.Pass != tc.pass {
			t.Errorf("silent %s, fault window %s, outage %.0f ms: pass = %v, want %v (%+v)", tc.silent, tc.window, tc.outageMs, o.Pass, tc.pass, o)
		}
		if tc.silent > 0 && !strings.Contains(o.Got, "the store itself silent") {
			t.Errorf("got %q does not say how long the store itself was silent", o.Got)
		}
	}
}

func TestStoreProbeSilenceWithin(t *testing.T) {
	t0 := time.Now()
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	p := &storeProbe{silent: [][2]time.Time{{at(1), at(3)}, {at(10), at(14)}}}
	for _, tc := range []struct {
		from, to float64
		want     time.Duration
	}{{0, 20, 6 * time.Second}, {2, 11, 2 * time.Second}, {4, 9, 0}, {12, 30, 2 * time.Second}} {
		if got := p.silentWithin(at(tc.from), at(tc.to)); got != tc.want {
			t.Errorf("silent within [%g, %g] = %s, want %s", tc.from, tc.to, got, tc.want)
		}
	}
}
