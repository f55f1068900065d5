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

	"github.com/lockd/lockd/compare/harness"
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
	res, err := harness.Run(t.Context(), cfg, &progress)
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
		checkCells(t, br, cfg, harness.SizesFor(cfg))
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
	var back harness.Results
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
func checkCells(t *testing.T, br *harness.BackendRun, cfg harness.Config, sz harness.Sizes) {
	t.Helper()
	// lockd twice (over HTTP and in process) unless -no-http, then each
	// direct library.
	lockdWays := 2
	if cfg.NoHTTP {
		lockdWays = 1
	}
	nVias := lockdWays + len(directsOf(br))
	notRun := map[string]bool{}
	for _, n := range br.NotRun {
		notRun[n.Scenario] = true
	}
	for _, s := range cfg.Scenarios {
		if notRun[s] {
			continue
		}
		switch s {
		case "latency":
			if br.LockdMissing == "" && (br.LatencyOf(harness.ViaContract) == nil || (!cfg.NoHTTP && br.LatencyOf(harness.ViaHTTP) == nil)) {
				t.Errorf("%s latency: want lockd both over HTTP and in process, got %d cells", br.Name, len(br.Latency))
			}
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
			if l := br.LatencyOf(br.LockdVia()); l == nil && br.LockdMissing == "" {
				t.Errorf("%s: lockd's uncontended latency was not measured", br.Name)
			}
		case "handoff":
			if want := nVias * len(sz.HandoffWaiters); len(br.Handoff) != want {
				t.Errorf("%s handoff: got %d cells, want %d", br.Name, len(br.Handoff), want)
			}
			for _, c := range br.Handoff {
				if c.Lat == nil && c.Unmeasured == "" {
					t.Errorf("%s handoff %s/%d: empty cell", br.Name, c.Via, c.Waiters)
				}
			}
		case "throughput":
			if want := min(nVias-lockdWays+1, 1+sz.TputDirects) * len(sz.TputClients) * len(sz.TputKeys); len(br.Throughput) != want {
				t.Errorf("%s throughput: got %d cells, want %d", br.Name, len(br.Throughput), want)
			}
			for _, c := range br.Throughput {
				if c.Unmeasured == "" && !(c.PerSec > 0) {
					t.Errorf("%s throughput %s %d/%d: no rate and no reason", br.Name, c.Via, c.Clients, c.Keys)
				}
			}
		case "scale":
			if len(br.Scale) != 1 || len(br.Waiters) != 2 {
				t.Errorf("%s scale: got %d lease cells and %d waiter cells, want 1 and 2", br.Name, len(br.Scale), len(br.Waiters))
			}
			for _, c := range br.Scale {
				if c.Unmeasured == "" && c.Reached == 0 {
					t.Errorf("%s scale %q: nothing reached and no reason", br.Name, c.What)
				}
			}
			for _, c := range br.Waiters {
				if c.Unmeasured == "" && (c.Reached == 0 || c.LockdRSSMB <= 0) {
					t.Errorf("%s scale %q: no poll waiting or no lockd RSS, and no reason", br.Name, c.What)
				}
			}
		case "roundtrips":
			if len(br.RoundTrips) != nVias-lockdWays+1 {
				t.Errorf("%s round trips: got %d cells, want %d", br.Name, len(br.RoundTrips), nVias)
			}
			for _, c := range br.RoundTrips {
				if c.Unmeasured == "" && !(c.PerAcquire >= 1) {
					t.Errorf("%s round trips %s: %.2f requests per acquire; a lock needs at least one", br.Name, c.Via, c.PerAcquire)
				}
			}
		case "history":
			switch h := br.History; {
			case h == nil:
				t.Errorf("%s history: no result", br.Name)
			case h.Unmeasured == "" && !(h.FirstUs > 0 && h.LastUs > 0 && h.FreshUs > 0):
				t.Errorf("%s history: p50s %v/%v/%v; want all measured", br.Name, h.FirstUs, h.LastUs, h.FreshUs)
			}
		case "election":
			switch e := br.Election; {
			case e == nil:
				t.Errorf("%s election: no result", br.Name)
			case e.Unmeasured != "" && len(e.Cells) == 0:
				t.Logf("%s election: not measured: %s", br.Name, e.Unmeasured)
			default:
				for _, c := range e.Cells {
					if !c.Pass {
						t.Errorf("%s election %s: red on an unbroken backend: %+v", br.Name, c.Via, c.Checks)
					}
				}
			}
		case "semaphores", "rwlocks":
			checkPrimitiveRows(t, br, s)
		case "lost-replies":
			switch r := br.LostReplies; {
			case r == nil:
				t.Errorf("%s lost replies: no result", br.Name)
			case r.Unmeasured != "":
				t.Logf("%s lost replies: not measured: %s", br.Name, r.Unmeasured)
			case r.Keyed.Lost == 0 || r.Unkeyed.Lost == 0:
				t.Errorf("%s lost replies: no reply lost (keyed %d, unkeyed %d)", br.Name, r.Keyed.Lost, r.Unkeyed.Lost)
			case !r.Pass:
				t.Errorf("%s lost replies: %d orphaned grants with Idempotency-Key retries", br.Name, r.Keyed.Orphaned)
			}
		default:
			c := br.CorrectnessOf(s)
			switch {
			case c == nil:
				t.Errorf("%s %s: no cell", br.Name, s)
			case c.Unmeasured != "":
				t.Logf("%s %s: not measured: %s", br.Name, s, c.Unmeasured)
			case c.Attempts == 0:
				t.Errorf("%s %s: no acquire attempted", br.Name, s)
			case c.Fenced.Check.Result == "" || c.Unfenced.Check.Result == "":
				t.Errorf("%s %s: history not checked", br.Name, s)
			case s == "clock-skew" && len(c.Checks) != len(harness.CheckNames)+2:
				t.Errorf("%s %s: %d checks in the verdict, want %d (the table and the two readiness checks)", br.Name, s, len(c.Checks), len(harness.CheckNames)+2)
			case s != "clock-skew" && len(c.Checks) != len(harness.CheckNames):
				t.Errorf("%s %s: %d checks in the verdict, want %d", br.Name, s, len(c.Checks), len(harness.CheckNames))
			}
			if s == "nofault" && c != nil && c.Unmeasured == "" && !c.Pass {
				t.Errorf("%s nofault (no fault injected) is not safe: %v", br.Name, c.Why)
			}
		}
	}
}

// checkPrimitiveRows: the semaphores and rwlocks rows are measured, or say
// why not (not supported: the capabilities' reason).
func checkPrimitiveRows(t *testing.T, br *harness.BackendRun, s string) {
	t.Helper()
	if s == "semaphores" {
		switch p := br.Semaphores; {
		case p == nil:
			t.Errorf("%s semaphores: no result", br.Name)
		case p.Unsupported != "" || p.Unmeasured != "":
			t.Logf("%s semaphores: unsupported %q, not measured %q", br.Name, p.Unsupported, p.Unmeasured)
		default:
			for _, c := range p.Throughput {
				if c.Unmeasured == "" && !(c.PerSec > 0) {
					t.Errorf("%s semaphores N=%d: no rate and no reason", br.Name, c.Permits)
				}
			}
			if p.Handoff == nil || (p.Handoff.Lat == nil && p.Handoff.Unmeasured == "") {
				t.Errorf("%s semaphores: handoff cell empty: %+v", br.Name, p.Handoff)
			}
		}
		return
	}
	switch p := br.RWLocks; {
	case p == nil:
		t.Errorf("%s rwlocks: no result", br.Name)
	case p.Unsupported != "" || p.Unmeasured != "":
		t.Logf("%s rwlocks: unsupported %q, not measured %q", br.Name, p.Unsupported, p.Unmeasured)
	default:
		for _, c := range p.Flood {
			if c.WriterWait == nil && c.Unmeasured == "" {
				t.Errorf("%s rwlocks %d readers: no writer wait and no reason", br.Name, c.Readers)
			}
		}
	}
}

func directsOf(br *harness.BackendRun) []string {
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

func TestMaxClockSkewFlag(t *testing.T) {
	cfg, err := parseFlags([]string{"-max-clock-skew", "2500ms"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MaxClockSkew != 2500*time.Millisecond {
		t.Errorf("-max-clock-skew 2500ms: got %s", cfg.MaxClockSkew)
	}
	if cfg, _ := parseFlags(nil, io.Discard); cfg.MaxClockSkew != harness.DefaultMaxClockSkew {
		t.Errorf("default skew %s, want %s", cfg.MaxClockSkew, harness.DefaultMaxClockSkew)
	}
}
