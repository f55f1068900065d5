package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"strconv"
	"syscall"
	"time"

	"github.com/lockd/lockd/client"
	"github.com/lockd/lockd/internal/lease"
)

func defaultOwner() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return "lockctl " + name + "@" + host + ":" + strconv.Itoa(os.Getpid())
}

// stopTimes returns, for a TTL and a --grace, how long before the deadline
// the child is sent SIGTERM (margin) and how long before it SIGKILL comes at
// the latest (safety). Both count back from the deadline computed from when
// the last successful renew was SENT.
func stopTimes(ttl, grace time.Duration) (margin, safety time.Duration) {
	safety = max(ttl/10, 10*time.Millisecond)
	return grace + safety, safety
}

// refusedStopWindow is how long a child may take to exit on SIGTERM after a
// renew was refused (410) before its process group is SIGKILLed. A refusal
// means the lease is already gone and someone else may hold the lock, so
// --grace, meant for renewals that fail while the lease may still be valid,
// does not apply; a shorter --grace does.
const refusedStopWindow = 500 * time.Millisecond

// refused reports whether err, a lock's loss, is the server refusing a renew
// (410) rather than the client giving up after renewals failed.
func refused(err error) bool {
	var e *client.Error
	return errors.As(err, &e) && errors.Is(e, client.ErrLeaseExpired)
}

func defaultGrace(ttl time.Duration) time.Duration {
	return min(ttl/5, 10*time.Second)
}

func cmdRun(ctx context.Context, g *global, args []string, getenv env) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	read := fs.Bool("read", false, "hold KEY's read-write lock in read mode (shared with other readers) instead of the lock KEY")
	write := fs.Bool("write", false, "hold KEY's read-write lock in write mode (exclusive) instead of the lock KEY")
	permits := fs.Int("n", 0, "hold one of N permits of the counting semaphore KEY instead of the lock KEY (like consul lock -n)")
	return supervise(ctx, g, fs, args, getenv, superviseSpec{
		what: "lease on", usage: "run: want KEY [flags] -- CMD [ARGS...]",
		check: func() error {
			if *read && *write {
				return errors.New("run: --read and --write exclude each other")
			}
			if *permits != 0 && (*read || *write) {
				return errors.New("run: -n excludes --read and --write")
			}
			return nil
		},
		take: func(ctx context.Context, c *client.Client, key string, o takeOpts) (*client.Lock, []string, error) {
			if *permits != 0 {
				return takePermit(ctx, c, key, *permits, o)
			}
			opts := client.AcquireOptions{TTL: o.ttl, Wait: o.wait, Owner: o.owner, Margin: o.margin, RenewEvery: o.renewEvery, LockDelay: o.lockDelay}
			acquire, what := c.Acquire, "acquire"
			switch {
			case *read:
				acquire, what = c.AcquireRead, "acquire read"
			case *write:
				acquire, what = c.AcquireWrite, "acquire write"
			}
			l, err := acquire(ctx, key, opts)
			if err != nil {
				return nil, nil, fmt.Errorf("%s %s: %w", what, key, err)
			}
			vars := []string{
				"LOCKD_KEY=" + l.Key(),
				"LOCKD_TOKEN=" + strconv.FormatUint(l.Token(), 10),
				"LOCKD_LEASE_ID=" + l.LeaseID(),
				"LOCKD_DEADLINE=" + lease.Format(l.Deadline()),
			}
			if l.Mode() != "" {
				vars = append(vars, "LOCKD_MODE="+l.Mode())
			}
			return l, vars, nil
		},
	})
}

// takePermit is run -n: one permit of the semaphore key, and its slot for
// the child to fence with (Lock-Slot).
func takePermit(ctx context.Context, c *client.Client, key string, permits int, o takeOpts) (*client.Lock, []string, error) {
	if permits < 1 || permits > 10000 {
		return nil, nil, &client.Error{Status: 400, Code: "invalid_permits", Detail: "-n must be 1..10000"}
	}
	l, err := c.AcquireSemaphore(ctx, key, client.SemaphoreOptions{
		Permits: permits, TTL: o.ttl, Wait: o.wait, Owner: o.owner, Margin: o.margin, RenewEvery: o.renewEvery, LockDelay: o.lockDelay,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("acquire a permit of %s: %w", key, err)
	}
	return l, []string{
		"LOCKD_KEY=" + l.Key(),
		"LOCKD_SLOT=" + strconv.Itoa(l.Slot()),
		"LOCKD_TOKEN=" + strconv.FormatUint(l.Token(), 10),
		"LOCKD_LEASE_ID=" + l.LeaseID(),
		"LOCKD_DEADLINE=" + lease.Format(l.Deadline()),
	}, nil
}

// takeOpts are the lease parameters supervise hands to a superviseSpec's take.
type takeOpts struct {
	ttl, wait, margin, renewEvery, lockDelay time.Duration
	owner                                    string
}

// superviseSpec is what differs between run (a lock) and elect (a
// leadership): everything else — flags, timings, signals, stopping the
// child before the lease can lapse, releasing — is supervise's.
type superviseSpec struct {
	what  string // "lease on" or "leadership of", for messages
	usage string
	// check, when set, checks the caller's own flags once parsed.
	check func() error
	// take obtains the lease, renewing itself with o's timings, and
	// returns it with the variables the child gets.
	take func(ctx context.Context, c *client.Client, name string, o takeOpts) (*client.Lock, []string, error)
}

// supervise runs the command after the positional NAME while it holds the
// lease spec.take obtains: fs may carry the caller's own flags.
func supervise(ctx context.Context, g *global, fs *flag.FlagSet, args []string, getenv env, spec superviseSpec) int {
	var a acquireFlags
	grace := time.Duration(-1)
	a.register(fs, getenv)
	fs.DurationVar(&grace, "grace", -1, "time between SIGTERM and SIGKILL when renewals fail (default TTL/5, at most 10s; a refused renew: at most 500ms)")
	pos, command, err := parse(g, fs, args, 1)
	if err != nil {
		return flagErr(g, fs.Name(), err)
	}
	if len(pos) != 1 || len(command) == 0 {
		return usageErr(g, "%s", spec.usage)
	}
	if spec.check != nil {
		if err := spec.check(); err != nil {
			return usageErr(g, "%v", err)
		}
	}
	if code := a.check(g); code != exitOK {
		return code
	}
	if grace < 0 {
		grace = defaultGrace(a.ttl)
	}
	renewEvery := a.ttl / 3
	margin, safety := stopTimes(a.ttl, grace)
	// Renewals need time to succeed before the child is stopped: at least
	// one renew period plus one more try.
	if margin > a.ttl-renewEvery-renewEvery/2 {
		return usageErr(g, "%s: --grace %v too long for --ttl %v (at most %v)", fs.Name(), grace, a.ttl, a.ttl-renewEvery-renewEvery/2-safety)
	}
	path, err := exec.LookPath(command[0])
	if err != nil {
		fmt.Fprintf(g.stderr, "lockctl: %s: %v\n", fs.Name(), err)
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			return exitNotFound
		}
		return exitNoExec
	}

	// Signals arriving while we wait for the lease cancel the wait; once
	// the child runs they are forwarded to it.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	// supervise handles SIGINT/SIGTERM itself (the caller's ctx is
	// cancelled by the same signals, and must not win the race to end the
	// wait).
	actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	interrupted := make(chan syscall.Signal, 1)
	go func() {
		select {
		case s := <-sigs:
			interrupted <- s.(syscall.Signal)
			cancel()
		case <-actx.Done():
		}
	}()

	c, err := g.client()
	if err != nil {
		cancel()
		return usageErr(g, "%v", err)
	}
	name := pos[0]
	l, vars, err := spec.take(actx, c, name, takeOpts{ttl: a.ttl, wait: a.wait, owner: a.owner, margin: margin, renewEvery: renewEvery, lockDelay: a.lockDelay})
	cancel()
	if err != nil {
		select {
		case s := <-interrupted:
			// Interrupted while waiting: the shell's convention.
			fmt.Fprintf(g.stderr, "lockctl: %s %s: interrupted by %v\n", fs.Name(), name, s)
			return 128 + int(s)
		default:
		}
		return fail(g, fs.Name(), err)
	}

	cmd := exec.Command(path, command[1:]...)
	cmd.Args[0] = command[0]
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(append(os.Environ(), vars...), "LOCKD_ADDR="+g.server)
	// Its own process group: lockctl decides which signals reach the child,
	// and a lease loss stops the child's children too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		releaseQuietly(l)
		fmt.Fprintf(g.stderr, "lockctl: %s: %v\n", fs.Name(), err)
		return exitNoExec
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	pgid := cmd.Process.Pid
	group := func(sig syscall.Signal) { _ = syscall.Kill(-pgid, sig) }

	lost := l.Lost()
	states := l.States()
	var killTimer <-chan time.Time
	leaseLost := false
	for {
		select {
		case s := <-sigs:
			group(s.(syscall.Signal))
		case st, ok := <-states:
			if !ok {
				states = nil
			} else if st == client.StateJeopardy {
				fmt.Fprintf(g.stderr, "lockctl: renewals of the %s %s failing; the command is stopped if none succeeds by %s\n",
					spec.what, name, lease.Format(l.Deadline().Add(-margin)))
			}
		case <-lost:
			lost = nil
			leaseLost = true
			fmt.Fprintf(g.stderr, "lockctl: %s %s lost (%v); stopping the command\n", spec.what, name, l.Err())
			group(syscall.SIGTERM)
			// SIGKILL after the grace, and in any case `safety` before the
			// deadline counted from the last renew's send; at once (after
			// a short window) when the server said the lease is gone.
			wait := min(grace, time.Until(l.Deadline().Add(-safety)))
			if refused(l.Err()) {
				wait = min(grace, refusedStopWindow)
			}
			killTimer = time.After(max(wait, 0))
		case <-killTimer:
			killTimer = nil
			group(syscall.SIGKILL)
		case <-exited:
			// Whatever the child left in its group (a `cmd &`) must not
			// outlive the lease: kill it before the lease is released.
			group(syscall.SIGKILL)
			if leaseLost {
				releaseQuietly(l)
				return exitLeaseLost
			}
			rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := l.Release(rctx)
			rcancel()
			if err != nil && !errors.Is(err, client.ErrLeaseExpired) {
				fmt.Fprintf(g.stderr, "lockctl: releasing the %s %s: %v (the lease runs out on its own)\n", spec.what, name, err)
			}
			return exitStatus(cmd.ProcessState)
		}
	}
}

func releaseQuietly(l *client.Lock) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = l.Release(ctx)
}

// exitStatus is the shell's convention: the exit code, or 128+N for a child
// killed by signal N.
func exitStatus(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}
