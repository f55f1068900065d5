package main

import (
	"encoding/json"
	"io"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// TestQuickRun runs `compare -quick` on every backend whose server is here,
// and checks the results for sanity: no NaN or infinity anywhere, every
// requested cell filled (measured, or saying why not), the control scenario
// safe, and the three outputs written.
func TestQuickRun(t *testing.T) {
	if testing.Short() {
		t.Skip("the quick run starts real servers; skipped with -short")
	}
	out := t.TempDir()
	var progress strings.Builder
	cfg, err := parseFlags([]string{"-quick", "-out", out, "-seed", "42"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	res, err := compare(t.Context(), cfg, &progress)
	if err != nil {
		t.Fatalf("compare: %v\nprogress:\n%s", err, progress.String())
	}
	if err := writeOutputs(out, res); err != nil {
		t.Fatal(err)
	}
	t.Logf("progress:\n%s", progress.String())

	checkFinite(t, "results", reflect.ValueOf(res))
	ran := 0
	for _, br := range res.Backends {
		if br.Skipped != "" {
			if strings.Contains(br.Skipped, "LOCKD_REQUIRE_SERVERS=1") {
				t.Errorf("%s: %s", br.Name, br.Skipped)
			}
			if br.Install == "" {
				t.Errorf("%s skipped without an install command", br.Name)
			}
			continue
		}
		ran++
		checkCells(t, br, cfg, sizesFor(cfg))
	}
	if ran == 0 {
		t.Skip("no backend's server is installed here")
	}
	for _, name := range []string{"results.json", "report.md", "report.html"} {
		b, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatalf("read %s: %v", name, err)
		}
		// Infinities are caught by checkFinite above (and JSON cannot carry
		// them); a NaN formatted into the text shows up here.
		if strings.Contains(string(b), "NaN") {
			t.Errorf("%s mentions NaN", name)
		}
	}
	var back Results
	b, _ := os.ReadFile(filepath.Join(out, "results.json"))
	if err := json.Unmarshal(b, &back); err != nil {
		t.Errorf("results.json does not decode: %v", err)
	}
	html, _ := os.ReadFile(filepath.Join(out, "report.html"))
	if got := strings.Count(string(html), "<svg"); got == 0 {
		t.Errorf("report.html has no SVG chart")
	}
	for _, banned := range []string{"<script", "<link", "src=", "href=", "@import", "url("} {
		if strings.Contains(string(html), banned) {
			t.Errorf("report.html contains %q: it must be self-contained", banned)
		}
	}
}

// checkCells: every requested cell exists, and is measured or says why.
func checkCells(t *testing.T, br *BackendRun, cfg config, sz sizes) {
	t.Helper()
	nVias := 1 + len(directsOf(br))
	for _, s := range cfg.Scenarios {
		switch s {
		case "latency":
			if len(br.Latency) != nVias {
				t.Errorf("%s latency: got %d cells, want %d", br.Name, len(br.Latency), nVias)
			}
			for _, c := range br.Latency {
				if c.Lat == nil && c.Unmeasured == "" {
					t.Errorf("%s latency %s: empty cell", br.Name, c.Via)
				}
				if c.Lat != nil && !(c.Lat.P50 > 0 && c.Lat.P50 <= c.Lat.P99 && c.Lat.P99 <= c.Lat.Max) {
					t.Errorf("%s latency %s: percentiles out of order: %+v", br.Name, c.Via, *c.Lat)
				}
			}
			if l := findLatency(br, res0Via(br)); l == nil && br.LockdMissing == "" {
				t.Errorf("%s: lockd's uncontended latency was not measured", br.Name)
			}
		case "handoff":
			if want := nVias * len(sz.handoffWaiters); len(br.Handoff) != want {
				t.Errorf("%s handoff: got %d cells, want %d", br.Name, len(br.Handoff), want)
			}
			for _, c := range br.Handoff {
				if c.Lat == nil && c.Unmeasured == "" {
					t.Errorf("%s handoff %s/%d: empty cell", br.Name, c.Via, c.Waiters)
				}
			}
		case "throughput":
			if want := min(nVias, 1+sz.tputDirects) * len(sz.tputClients) * len(sz.tputKeys); len(br.Throughput) != want {
				t.Errorf("%s throughput: got %d cells, want %d", br.Name, len(br.Throughput), want)
			}
			for _, c := range br.Throughput {
				if c.Unmeasured == "" && !(c.PerSec > 0) {
					t.Errorf("%s throughput %s %d/%d: no rate and no reason", br.Name, c.Via, c.Clients, c.Keys)
				}
			}
		case "scale":
			if len(br.Scale) != 2 {
				t.Errorf("%s scale: got %d cells, want 2", br.Name, len(br.Scale))
			}
			for _, c := range br.Scale {
				if c.Unmeasured == "" && c.Reached == 0 {
					t.Errorf("%s scale %q: nothing reached and no reason", br.Name, c.What)
				}
			}
		case "roundtrips":
			if len(br.RoundTrips) != nVias {
				t.Errorf("%s round trips: got %d cells, want %d", br.Name, len(br.RoundTrips), nVias)
			}
			for _, c := range br.RoundTrips {
				if c.Unmeasured == "" && !(c.PerAcquire >= 1) {
					t.Errorf("%s round trips %s: %.2f requests per acquire; a lock needs at least one", br.Name, c.Via, c.PerAcquire)
				}
			}
		default:
			c := correctnessCell(br, s)
			switch {
			case c == nil:
				t.Errorf("%s %s: no cell", br.Name, s)
			case c.Unmeasured != "":
				t.Logf("%s %s: not measured: %s", br.Name, s, c.Unmeasured)
			case c.Attempts == 0:
				t.Errorf("%s %s: no acquire attempted", br.Name, s)
			case c.Fenced.Check.Result == "" || c.Unfenced.Check.Result == "":
				t.Errorf("%s %s: history not checked", br.Name, s)
			}
			if s == "nofault" && c != nil && c.Unmeasured == "" && !c.Pass {
				t.Errorf("%s nofault (no fault injected) is not safe: %v", br.Name, c.Why)
			}
		}
	}
}

func directsOf(br *BackendRun) []string {
	var ds []string
	for _, c := range br.Latency {
		if !strings.HasPrefix(c.Via, "lockd") {
			ds = append(ds, c.Via)
		}
	}
	return ds
}

// checkFinite walks v and fails on any NaN or infinite float.
func checkFinite(t *testing.T, path string, v reflect.Value) {
	t.Helper()
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			checkFinite(t, path, v.Elem())
		}
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).IsExported() {
				checkFinite(t, path+"."+v.Type().Field(i).Name, v.Field(i))
			}
		}
	case reflect.Slice, reflect.Array:
		for i := 0; i < v.Len(); i++ {
			checkFinite(t, path, v.Index(i))
		}
	case reflect.Float32, reflect.Float64:
		if f := v.Float(); math.IsNaN(f) || math.IsInf(f, 0) {
			t.Errorf("%s = %v", path, f)
		}
	}
}

func TestRegisterFencing(t *testing.T) {
	now := time.Now()
	later := now.Add(time.Hour)
	r := newRegister(true)
	v := r.read(1, later, now)
	if ok, _ := r.write(1, 10, v, now); !ok {
		t.Fatalf("first write with token 10 refused")
	}
	v = r.read(2, later, now)
	if ok, stale := r.write(2, 9, v, now); ok || !stale {
		t.Errorf("write with token 9 after 10: accepted=%v stale=%v, want refused and stale", ok, stale)
	}
	u := newRegister(false)
	u.write(1, 10, u.read(1, later, now), now)
	if ok, stale := u.write(2, 9, u.read(2, later, now), now); !ok || !stale {
		t.Errorf("unfenced write with token 9 after 10: accepted=%v stale=%v, want accepted and stale", ok, stale)
	}
	if got := u.stats().StaleAccepted; got != 1 {
		t.Errorf("unfenced stale accepted = %d, want 1", got)
	}
}

func TestRegisterCountsOverlapOnlyWhileBothLeasesLive(t *testing.T) {
	now := time.Now()
	r := newRegister(true)
	r.read(1, now.Add(time.Second), now)
	r.read(2, now.Add(time.Second), now) // both unexpired: a violation
	r.abandon(1)
	r.abandon(2)
	r.read(3, now.Add(-time.Millisecond), now) // 3's lease already ran out
	r.read(4, now.Add(time.Second), now)
	st := r.stats()
	if st.Overlaps != 1 || st.ExpiredOverlaps != 1 {
		t.Errorf("overlaps = %d, expired overlaps = %d; want 1 and 1", st.Overlaps, st.ExpiredOverlaps)
	}
}

// TestCheckerFindsLostUpdate: two critical sections that read the same value
// cannot both be atomic; the checker must say so and show where.
func TestCheckerFindsLostUpdate(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	h := []histOp{
		{Kind: opAcquire, Client: 0, Call: at(0), Return: at(1), Granted: true, Token: 1},
		{Kind: opRMW, Client: 0, Call: at(2), Return: at(10), Token: 1, FRead: 0, URead: 0, FAccepted: true, UAccepted: true},
		{Kind: opAcquire, Client: 1, Call: at(3), Return: at(4), Granted: true, Token: 2},
		{Kind: opRMW, Client: 1, Call: at(5), Return: at(6), Token: 2, FRead: 0, URead: 0, FAccepted: true, UAccepted: true},
	}
	// Then client 0 writes again having read 0: the increments in between
	// are lost, and no atomic order explains what it read.
	h = append(h, histOp{Kind: opRMW, Client: 1, Call: at(11), Return: at(12), Token: 2, FRead: 1, URead: 1, FAccepted: true, UAccepted: true},
		histOp{Kind: opRMW, Client: 0, Call: at(13), Return: at(14), Token: 1, FRead: 0, URead: 0, FAccepted: true, UAccepted: true})
	got := checkHistory(h, false, t0, 5*time.Second)
	if got.Result != "NOT linearizable" {
		t.Fatalf("unfenced check = %q, want NOT linearizable", got.Result)
	}
	if !strings.Contains(got.FirstViolation, "none of these can come next") {
		t.Errorf("first violation not shown:\n%s", got.FirstViolation)
	}
}

func TestCheckerRefusedStaleWriteIsFine(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	// Client 0 pauses across client 1's whole grant; its late write with the
	// older token is refused by the fenced register: that is linearizable.
	h := []histOp{
		{Kind: opAcquire, Client: 0, Call: at(0), Return: at(1), Granted: true, Token: 5},
		{Kind: opRMW, Client: 0, Call: at(2), Return: at(50), Token: 5, FRead: 0, FAccepted: false},
		{Kind: opAcquire, Client: 1, Call: at(20), Return: at(21), Granted: true, Token: 6},
		{Kind: opRMW, Client: 1, Call: at(22), Return: at(23), Token: 6, FRead: 0, FAccepted: true},
	}
	if got := checkHistory(h, true, t0, 5*time.Second); got.Result != "linearizable" {
		t.Errorf("fenced check = %q, want linearizable\n%s", got.Result, got.FirstViolation)
	}
	// A grant with a token not above an earlier one is illegal.
	h = append(h, histOp{Kind: opAcquire, Client: 2, Call: at(60), Return: at(61), Granted: true, Token: 4})
	if got := checkHistory(h, true, t0, 5*time.Second); got.Result != "NOT linearizable" {
		t.Errorf("token going backwards: check = %q, want NOT linearizable", got.Result)
	}
}
