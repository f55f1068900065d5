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
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/lockd/lockd/compare/harness"
	"github.com/lockd/lockd/compare/report"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "compare:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string, stderr io.Writer) (harness.Config, error) {
	fs := flag.NewFlagSet("compare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	names, tnames := harness.ScenarioNames(), harness.TargetNames()
	backends := fs.String("backends", strings.Join(tnames, ","), "comma-separated backends to measure")
	scenarios := fs.String("scenarios", strings.Join(names, ","), "comma-separated scenarios to run")
	duration := fs.Duration("duration", 0, "measuring time per cell (default 6s; 1s with -quick)")
	quick := fs.Bool("quick", false, "small sizes and short cells: the CI smoke run (under 3 minutes on 2 cores)")
	out := fs.String("out", "compare-out", "directory for results.json, report.md and report.html")
	noHTTP := fs.Bool("no-http", false, "drive lockd through the backend contract in process instead of its HTTP API (to separate HTTP's cost)")
	skew := fs.Duration("max-clock-skew", harness.DefaultMaxClockSkew, "clock skew the deployments declare (as lockd's --max-clock-skew): a dead holder's lock must be free within TTL + this + 1s")
	seed := fs.Uint64("seed", 0, "seed of the workloads' random choices (default: from the clock; printed in the report)")
	if err := fs.Parse(args); err != nil {
		return harness.Config{}, err
	}
	cfg := harness.Config{Duration: *duration, Quick: *quick, Out: *out, Seed: *seed, NoHTTP: *noHTTP, MaxClockSkew: *skew}
	// -duration given with -scenarios soak alone is the soak's length
	// (`-scenarios soak -duration 5m`); otherwise the soak has its own.
	fs.Visit(func(f *flag.Flag) { cfg.ScenariosNamed = cfg.ScenariosNamed || f.Name == "scenarios" })
	if *duration > 0 && *scenarios == "soak" {
		cfg.SoakDuration = *duration
	}
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
		if !slices.Contains(tnames, b) {
			return cfg, fmt.Errorf("unknown backend %q (known: %s)", b, strings.Join(tnames, ", "))
		}
		cfg.Backends = append(cfg.Backends, b)
	}
	asked := map[string]bool{}
	for _, s := range strings.Split(*scenarios, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		if !slices.Contains(names, s) {
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

func run(ctx context.Context, args []string, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	res, err := harness.Run(ctx, cfg, stderr)
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

func writeOutputs(dir string, res *harness.Results) error {
	js, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(report.Markdown(res)), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "report.html"), []byte(report.HTML(res)), 0o644)
}
