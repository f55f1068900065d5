// Package harness is the measuring half of compare: the workloads, the
// registers they write, the history checker, the fault drivers and the
// deployments of real servers they run against. It returns Results and
// renders nothing (compare/report does).
//
// Every lockd number is taken through the backend contract, driven either
// over lockd's HTTP API or in process. The workloads speak Locker, for the
// reason given on it (the direct client libraries).
//
// It must never report a number it did not measure in the run: a cell that
// could not be measured says why.
package harness

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// Config is one run's parameters (compare's command line).
type Config struct {
	Backends  []string
	Scenarios []string
	Duration  time.Duration
	Quick     bool
	Out       string // where compare.log goes
	Seed      uint64
	NoHTTP    bool
	// SoakDuration is the soak's length; zero: 5 min (4 s with Quick).
	SoakDuration time.Duration
	// ScenariosNamed: the scenarios were asked for by name (-scenarios), so
	// no column leaves any out.
	ScenariosNamed bool
	// MaxClockSkew is the clock skew the deployments declare (lockd's
	// --max-clock-skew); zero means DefaultMaxClockSkew.
	MaxClockSkew time.Duration
}

// ScenarioNames are every scenario, in the report's order.
func ScenarioNames() []string {
	var names []string
	for _, s := range allScenarios {
		names = append(names, s.Name)
	}
	return names
}

// Scenarios describes every scenario, in the report's order.
func Scenarios() []Scenario { return append([]Scenario(nil), allScenarios...) }

// TargetNames are the backends compare knows.
func TargetNames() []string {
	var names []string
	for _, t := range targets() {
		names = append(names, t.Name)
	}
	return names
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

// Run runs the whole matrix and returns what it measured.
func Run(ctx context.Context, cfg Config, stderr io.Writer) (*Results, error) {
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

	if cfg.MaxClockSkew <= 0 {
		cfg.MaxClockSkew = DefaultMaxClockSkew
	}
	sz := SizesFor(cfg)
	res := &Results{Started: time.Now(), Machine: machine(), GoVersion: runtime.Version(), Seed: cfg.Seed,
		Duration: cfg.Duration.String(), Quick: cfg.Quick, Lockd: ViaLockd(), Scenarios: cfg.Scenarios, Scaled: sz.Scaled,
		MaxClockSkew: cfg.MaxClockSkew.String()}
	fmt.Fprintf(stderr, "compare: backends %s; scenarios %s; %s per cell; seed %d; lockd driven as %s\n",
		strings.Join(cfg.Backends, ","), strings.Join(cfg.Scenarios, ","), cfg.Duration, cfg.Seed, ViaLockd())
	var steps []planStep
	for _, t := range targets() {
		if !contains(cfg.Backends, t.Name) {
			continue
		}
		for _, name := range cfg.Scenarios {
			if _, skip := t.skipByDefault[name]; skip && !cfg.ScenariosNamed {
				continue
			}
			steps = append(steps, planStep{backend: t.Name, scenario: name, est: estimateStep(t, name, cfg, sz)})
		}
	}
	p := newPlanner(stderr, steps, !cfg.Quick)
	// The full run's soaks run side by side at the end; the quick run's
	// 4 s soaks stay in each column's sequence.
	var soaks []pendingSoak
	soakList := &soaks
	if cfg.Quick {
		soakList = nil
	}
	for _, t := range targets() {
		if !contains(cfg.Backends, t.Name) {
			continue
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		res.Backends = append(res.Backends, runTarget(ctx, t, cfg, sz, stderr, p, soakList))
	}
	runSoaks(ctx, soaks, cfg, sz, stderr, p)
	res.Finished = time.Now()
	return res, ctx.Err()
}

// Sizes are the matrix dimensions; -quick scales them down and says so.
type Sizes struct {
	HandoffWaiters []int
	TputClients    []int
	TputKeys       []int
	TputDirects    int // how many direct libraries the throughput matrix covers
	RTSamples      int
	ScaleLeases    int
	ScaleBudget    time.Duration // per step
	Correct        CorrectnessConfig
	Scaled         []string

	// The waiter steps (scalewaiters.go): polls on one key, polls spread
	// over keys, each step's budget, idle-key acquires sampled.
	ScaleWaiters, ScaleSpread, ScaleSpreadKeys int
	ScaleWaiterBudget                          time.Duration
	IdleSamples                                int
	// ScaleSessionLocks locks held in ScaleSessions sessions
	// (scalesessions.go).
	ScaleSessionLocks, ScaleSessions int
}

// SizesFor sizes a run.
func SizesFor(cfg Config) Sizes {
	s := Sizes{
		HandoffWaiters: []int{1, 10, 100},
		TputClients:    []int{1, 4, 16, 64, 256},
		TputKeys:       []int{1, 100, 10000},
		TputDirects:    1,
		RTSamples:      200,
		ScaleLeases:    100000,
		ScaleBudget:    60 * time.Second,
		Correct: CorrectnessConfig{Clients: 5, TTL: time.Second, Wait: 2 * time.Second, Hold: time.Millisecond,
			Duration: cfg.Duration * 3 / 2, Seed: cfg.Seed, CheckFor: 60 * time.Second, MaxClockSkew: cfg.MaxClockSkew},
	}
	s.ScaleWaiters, s.ScaleSpread, s.ScaleSpreadKeys, s.ScaleWaiterBudget, s.IdleSamples = 10000, 50000, 1000, 60*time.Second, 500
	s.ScaleSessionLocks, s.ScaleSessions = 100000, 1000
	if cfg.Quick {
		s.HandoffWaiters = []int{1, 10}
		s.TputClients = []int{1, 16}
		s.TputKeys = []int{1, 100}
		s.RTSamples = 30
		s.ScaleLeases, s.ScaleBudget = 2000, 10*time.Second
		s.ScaleWaiters, s.ScaleSpread, s.ScaleSpreadKeys, s.ScaleWaiterBudget, s.IdleSamples = 500, 2000, 20, 15*time.Second, 100
		s.ScaleSessionLocks, s.ScaleSessions = 2000, 20
		s.Correct = CorrectnessConfig{Clients: 4, TTL: 300 * time.Millisecond, Wait: 600 * time.Millisecond, Hold: time.Millisecond,
			Duration: max(cfg.Duration*5/2, 2500*time.Millisecond), Seed: cfg.Seed, CheckFor: 10 * time.Second, MaxClockSkew: cfg.MaxClockSkew}
		s.Scaled = []string{
			"handoff: 1 and 10 waiters (full run: 1, 10, 100)",
			"throughput: 1 and 16 clients over 1 and 100 keys, (full run: 1..256 clients over 1, 100, 10,000 keys)",
			"scale: 2,000 held leases; 2,000 locks in 20 sessions; 500 long polls on one key and 2,000 over 20 keys (full run: 100,000; 100,000 in 1,000; 10,000; 50,000 over 1,000 keys)",
			"history: 1,000 cycles on one key (full run: 50,000)",
			"soak: 4 s per backend (full run: 5 min, every backend's soak at the same time)",
			"lost replies: 4 lost acquires per mode, TTL 2 s (full run: 12, TTL 5 s)",
			fmt.Sprintf("correctness: %d clients, TTL %s, cells of %s (full run: 5 clients, TTL 1s, cells of 1.5 × duration)", s.Correct.Clients, s.Correct.TTL, s.Correct.Duration),
		}
	}
	return s
}

// fileLogger sends go-redis's connection chatter to compare.log.
type fileLogger struct{ w io.Writer }

func (l fileLogger) Printf(_ context.Context, format string, v ...any) {
	fmt.Fprintf(l.w, "go-redis: "+format+"\n", v...)
}
