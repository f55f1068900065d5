// Command compare measures every lockd backend side by side, in one run on
// one machine: correctness under real faults (killed processes, a real TCP
// proxy, paused holders) and performance through lockd's API and through
// each store's best direct client library. It writes results.json,
// report.md and a self-contained report.html.
//
// It starts every server it needs itself, on loopback ports, and never
// reports a number it did not measure in this run: a cell it could not
// measure says why.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "compare:", err)
		os.Exit(1)
	}
}

// config is the parsed command line.
type config struct {
	Backends  []string
	Scenarios []string
	Duration  time.Duration
	Quick     bool
	Out       string
	Seed      uint64
	NoHTTP    bool
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("compare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var names []string
	for _, s := range allScenarios {
		names = append(names, s.Name)
	}
	var tnames []string
	for _, t := range targets() {
		tnames = append(tnames, t.Name)
	}
	backends := fs.String("backends", strings.Join(tnames, ","), "comma-separated backends to measure")
	scenarios := fs.String("scenarios", strings.Join(names, ","), "comma-separated scenarios to run")
	duration := fs.Duration("duration", 0, "measuring time per cell (default 6s; 1s with -quick)")
	quick := fs.Bool("quick", false, "small sizes and short cells: the CI smoke run (under 3 minutes on 2 cores)")
	out := fs.String("out", "compare-out", "directory for results.json, report.md and report.html")
	noHTTP := fs.Bool("no-http", false, "drive lockd through the backend contract in process instead of its HTTP API (to separate HTTP's cost)")
	seed := fs.Uint64("seed", 0, "seed of the workloads' random choices (default: from the clock; printed in the report)")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	cfg := config{Duration: *duration, Quick: *quick, Out: *out, Seed: *seed, NoHTTP: *noHTTP}
	if cfg.Duration == 0 {
		cfg.Duration = 6 * time.Second
		if cfg.Quick {
			cfg.Duration = time.Second
		}
	}
	if cfg.Seed == 0 {
		cfg.Seed = uint64(time.Now().UnixNano())
	}
	for _, b := range strings.Split(*backends, ",") {
		if b = strings.TrimSpace(b); b == "" {
			continue
		}
		if !contains(tnames, b) {
			return cfg, fmt.Errorf("unknown backend %q (known: %s)", b, strings.Join(tnames, ", "))
		}
		cfg.Backends = append(cfg.Backends, b)
	}
	asked := map[string]bool{}
	for _, s := range strings.Split(*scenarios, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		if _, ok := scenarioByName(s); !ok {
			return cfg, fmt.Errorf("unknown scenario %q (known: %s)", s, strings.Join(names, ", "))
		}
		asked[s] = true
	}
	// Always in the table's order: scale runs last because it leaves a
	// large store behind.
	for _, s := range names {
		if asked[s] {
			cfg.Scenarios = append(cfg.Scenarios, s)
		}
	}
	return cfg, nil
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	res, err := compare(ctx, cfg, stderr)
	if err != nil {
		return err
	}
	if err := writeOutputs(cfg.Out, res); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "wrote %s, %s and %s\n", filepath.Join(cfg.Out, "results.json"),
		filepath.Join(cfg.Out, "report.md"), filepath.Join(cfg.Out, "report.html"))
	return nil
}

// compare runs the whole matrix and returns what it measured.
func compare(ctx context.Context, cfg config, stderr io.Writer) (*Results, error) {
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return nil, err
	}
	// Client libraries log through the standard logger (go-zookeeper's
	// reconnect chatter during kills); keep it out of the progress display.
	logf, err := os.Create(filepath.Join(cfg.Out, "compare.log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	log.SetOutput(logf)
	defer log.SetOutput(os.Stderr)
	goredis.SetLogger(fileLogger{logf})
	lockdLog = slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if cfg.NoHTTP {
		saved := lockdHandler
		lockdHandler = nil
		defer func() { lockdHandler = saved }()
	}

	sz := sizesFor(cfg)
	res := &Results{Started: time.Now(), Machine: machine(), GoVersion: runtime.Version(), Seed: cfg.Seed,
		Duration: cfg.Duration.String(), Quick: cfg.Quick, Lockd: viaLockd(), Scenarios: cfg.Scenarios, Scaled: sz.scaled}
	fmt.Fprintf(stderr, "compare: backends %s; scenarios %s; %s per cell; seed %d; lockd driven as %s\n",
		strings.Join(cfg.Backends, ","), strings.Join(cfg.Scenarios, ","), cfg.Duration, cfg.Seed, viaLockd())
	for _, t := range targets() {
		if !contains(cfg.Backends, t.Name) {
			continue
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		res.Backends = append(res.Backends, runTarget(ctx, t, cfg, sz, stderr))
	}
	res.Finished = time.Now()
	return res, ctx.Err()
}

// sizes are the matrix dimensions; -quick scales them down and says so.
type sizes struct {
	handoffWaiters []int
	tputClients    []int
	tputKeys       []int
	tputDirects    int // how many direct libraries the throughput matrix covers
	rtSamples      int
	scaleLeases    int
	scalePolls     int
	scaleBudget    time.Duration // per step
	correct        correctnessConfig
	scaled         []string
}

func sizesFor(cfg config) sizes {
	s := sizes{
		handoffWaiters: []int{1, 10, 100},
		tputClients:    []int{1, 4, 16, 64, 256},
		tputKeys:       []int{1, 100, 10000},
		tputDirects:    1,
		rtSamples:      200,
		scaleLeases:    100000,
		scalePolls:     10000,
		scaleBudget:    60 * time.Second,
		correct: correctnessConfig{Clients: 5, TTL: time.Second, Wait: 2 * time.Second, Hold: time.Millisecond,
			Duration: cfg.Duration * 3 / 2, Seed: cfg.Seed, CheckFor: 60 * time.Second},
	}
	if cfg.Quick {
		s.handoffWaiters = []int{1, 10}
		s.tputClients = []int{1, 16}
		s.tputKeys = []int{1, 100}
		s.rtSamples = 30
		s.scaleLeases, s.scalePolls, s.scaleBudget = 2000, 200, 10*time.Second
		s.correct = correctnessConfig{Clients: 4, TTL: 300 * time.Millisecond, Wait: 600 * time.Millisecond, Hold: time.Millisecond,
			Duration: max(cfg.Duration*5/2, 2500*time.Millisecond), Seed: cfg.Seed, CheckFor: 10 * time.Second}
		s.scaled = []string{
			"handoff: 1 and 10 waiters (full run: 1, 10, 100)",
			"throughput: 1 and 16 clients over 1 and 100 keys, (full run: 1..256 clients over 1, 100, 10,000 keys)",
			"scale: 2,000 held leases and 200 long polls (full run: 100,000 and 10,000)",
			fmt.Sprintf("correctness: %d clients, TTL %s, cells of %s (full run: 5 clients, TTL 1s, cells of 1.5 × duration)", s.correct.Clients, s.correct.TTL, s.correct.Duration),
		}
	}
	return s
}

// fileLogger sends go-redis's connection chatter to compare.log.
type fileLogger struct{ w io.Writer }

func (l fileLogger) Printf(_ context.Context, format string, v ...any) {
	fmt.Fprintf(l.w, "go-redis: "+format+"\n", v...)
}

func writeOutputs(dir string, res *Results) error {
	js, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(markdownReport(res)), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "report.html"), []byte(htmlReport(res)), 0o644)
}
