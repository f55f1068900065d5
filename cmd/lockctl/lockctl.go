package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/lockd/lockd/client"
	"github.com/lockd/lockd/internal/lease"
)

// Exit codes. A child's own status passes through `lockctl run` unchanged,
// so a child that itself exits with one of these is indistinguishable.
const (
	exitOK          = 0
	exitUsage       = 64  // bad command line
	exitInvalid     = 65  // the server refused the request as invalid (400, 413)
	exitUnavailable = 69  // lockd or its backend unreachable, or an acquire's outcome unknown
	exitError       = 70  // anything else
	exitLeaseLost   = 71  // run/elect: lease lost, child stopped; renew/release: lease expired (410)
	exitHeld        = 75  // lock held (elect: another leader) after --wait (409)
	exitDenied      = 77  // not authorized (401, 403)
	exitNoExec      = 126 // run/elect: the command cannot be executed
	exitNotFound    = 127 // run/elect: the command was not found
)

const usage = `usage: lockctl [--server ADDR] [--json] COMMAND ...

commands:
  run KEY [--read|--write|-n N] [--ttl 15s] [--wait 0] [--owner NAME] [--grace D] -- CMD [ARGS...]
      hold KEY while CMD runs; CMD gets LOCKD_KEY, LOCKD_TOKEN, LOCKD_LEASE_ID,
      LOCKD_DEADLINE and LOCKD_ADDR in its environment; --read or --write
      holds KEY's read-write lock in that mode instead, and adds LOCKD_MODE;
      -n N holds one of N permits of the semaphore KEY, and adds LOCKD_SLOT
  elect NAME [--value V] [--ttl 15s] [--wait 0] [--owner NAME] [--grace D] -- CMD [ARGS...]
      run CMD while leader of election NAME, with run's rules; CMD gets
      LOCKD_ELECTION, LOCKD_TERM (the fencing token), LOCKD_LEASE_ID,
      LOCKD_DEADLINE and LOCKD_ADDR; lockctl resigns when CMD exits
  observe NAME [--count N]
      print one line per event of election NAME (leader, no_leader, resync;
      --json: JSON lines) until interrupted (exit 0) or after N events
  watch KEY [--count N]
      the same for lock KEY (snapshot, acquired, released, expired, resync)
  acquire KEY [--ttl 15s] [--wait 0] [--owner NAME]
      take KEY and print its lease (no renewal: renew before the deadline)
  renew KEY LEASE_ID [--ttl D]     (defaults: $LOCKD_KEY, $LOCKD_LEASE_ID)
  release KEY LEASE_ID             (defaults: $LOCKD_KEY, $LOCKD_LEASE_ID)
  status KEY
  list [--prefix P]

global flags (anywhere on the line):
  --server ADDR   lockd address (default $LOCKD_ADDR, else 127.0.0.1:7070)
  --token T       bearer token (default $LOCKD_TOKEN_AUTH)
  --json          machine-readable output

exit codes:
  0    success (run, elect: the command's own status, 128+N if killed by
       signal N; 130/143 when SIGINT/SIGTERM interrupted the wait)
  64   usage error
  65   request refused as invalid
  69   lockd or its backend unreachable, or an acquire's outcome unknown
  70   other error
  71   lease or leadership lost (run/elect stopped the command), or lease
       expired (renew/release)
  75   lock held by someone else, or another leader (not won within --wait)
  77   not authorized
  126  command not executable;  127 command not found
`

// env is how lockctl reads its environment (a parameter for tests).
type env func(string) string

type global struct {
	server string
	token  string
	json   bool
	stdout io.Writer
	stderr io.Writer
}

func (g *global) register(fs *flag.FlagSet) {
	fs.StringVar(&g.server, "server", g.server, "lockd address")
	fs.StringVar(&g.token, "token", g.token, "bearer token")
	fs.BoolVar(&g.json, "json", g.json, "JSON output")
}

func (g *global) client() (*client.Client, error) {
	return client.New(g.server, &client.Options{BearerToken: g.token, UserAgent: "lockctl"})
}

// run is lockctl without the process: it returns the exit code.
func run(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) int {
	g := &global{server: getenv("LOCKD_ADDR"), token: getenv("LOCKD_TOKEN_AUTH"), stdout: stdout, stderr: stderr}
	if g.server == "" {
		g.server = "127.0.0.1:7070"
	}
	// Global flags may come before the command.
	fs := flag.NewFlagSet("lockctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	g.register(fs)
	if err := fs.Parse(args); err != nil || fs.NArg() == 0 {
		fmt.Fprint(stderr, usage)
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	switch cmd {
	case "run":
		return cmdRun(ctx, g, rest, getenv)
	case "elect":
		return cmdElect(ctx, g, rest, getenv)
	case "observe":
		return cmdObserve(ctx, g, rest)
	case "watch":
		return cmdWatch(ctx, g, rest)
	case "acquire":
		return cmdAcquire(ctx, g, rest)
	case "renew":
		return cmdRenew(ctx, g, rest, getenv)
	case "release":
		return cmdRelease(ctx, g, rest, getenv)
	case "status":
		return cmdStatus(ctx, g, rest)
	case "list":
		return cmdList(ctx, g, rest)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "lockctl: unknown command %q\n%s", cmd, usage)
	return exitUsage
}

// parse parses flags interleaved with up to maxPos positional arguments and
// returns the positionals and whatever follows them (run's command; a "--"
// before it is consumed by flag.Parse).
func parse(g *global, fs *flag.FlagSet, args []string, maxPos int) (pos, tail []string, err error) {
	fs.SetOutput(io.Discard)
	g.register(fs)
	for {
		// After KEY comes renew's and release's LEASE_ID, which starts
		// with '-' one time in 64 and is then no flag of ours.
		if len(pos) > 0 && len(pos) < maxPos && len(args) > 0 && isLeaseID(args[0]) {
			pos = append(pos, args[0])
			args = args[1:]
			continue
		}
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				// Asked for: the command's help on stdout (see flagErr).
				fmt.Fprintf(g.stdout, "%s\nflags of %s:\n", usage, fs.Name())
				fs.SetOutput(g.stdout)
				fs.PrintDefaults()
			}
			return nil, nil, err
		}
		args = fs.Args()
		if len(args) == 0 || len(pos) == maxPos {
			return pos, args, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// isLeaseID reports whether s has the exact shape of a lease id lockd
// hands out: 22 base64url characters, perhaps followed by a backend's
// '.'-suffix. No flag name has that shape.
func isLeaseID(s string) bool {
	base, _, _ := strings.Cut(s, ".")
	return len(base) == 22 && lease.ValidID(s) && !strings.Contains(base, "~")
}

// flagErr is the exit code for a command's flags that did not parse: 0 for
// -h/--help (parse printed the help), a usage error otherwise.
func flagErr(g *global, cmd string, err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	return usageErr(g, "%s: %v", cmd, err)
}

func usageErr(g *global, format string, a ...any) int {
	fmt.Fprintf(g.stderr, "lockctl: "+format+"\n", a...)
	return exitUsage
}

// fail prints err and maps it to an exit code.
func fail(g *global, what string, err error) int {
	fmt.Fprintf(g.stderr, "lockctl: %s: %v\n", what, err)
	return codeOf(err)
}

func codeOf(err error) int {
	var e *client.Error
	switch {
	case errors.Is(err, client.ErrHeld):
		return exitHeld
	case errors.Is(err, client.ErrLeaseExpired):
		return exitLeaseLost
	case errors.Is(err, client.ErrUnavailable), errors.Is(err, client.ErrOutcomeUnknown):
		return exitUnavailable
	case errors.As(err, &e):
		switch e.Status {
		case http.StatusUnauthorized, http.StatusForbidden:
			return exitDenied
		case http.StatusBadRequest, http.StatusRequestEntityTooLarge, http.StatusNotFound:
			return exitInvalid
		}
		return exitError
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return exitError
	}
	// Anything else from the client is a transport failure.
	return exitUnavailable
}

type acquireFlags struct {
	ttl, wait, lockDelay time.Duration
	owner                string
}

func (a *acquireFlags) register(fs *flag.FlagSet, getenv env) {
	fs.DurationVar(&a.ttl, "ttl", lease.DefaultTTL, "lease length")
	fs.DurationVar(&a.wait, "wait", 0, "how long to wait for the lock (0: one try)")
	fs.StringVar(&a.owner, "owner", "", "owner shown to others (default user@host:pid)")
	fs.DurationVar(&a.lockDelay, "lock-delay", 0, "should the lease expire (this process stopped renewing) rather than be released, nothing is granted in its place for this long after its deadline (0: the server's --lock-delay)")
}

func (a *acquireFlags) check(g *global) int {
	if a.ttl < lease.MinTTL || a.ttl > lease.MaxTTL {
		return usageErr(g, "--ttl %v out of range %v..%v", a.ttl, lease.MinTTL, lease.MaxTTL)
	}
	if a.wait < 0 || a.wait > lease.MaxWait {
		return usageErr(g, "--wait %v out of range 0..%v", a.wait, lease.MaxWait)
	}
	if a.lockDelay < 0 || a.lockDelay > 60*time.Second {
		return usageErr(g, "--lock-delay %v out of range 0..60s", a.lockDelay)
	}
	if a.owner == "" {
		a.owner = defaultOwner()
	}
	return exitOK
}

type grantOut struct {
	Key       string `json:"key"`
	LeaseID   string `json:"lease_id"`
	Token     uint64 `json:"token"`
	Owner     string `json:"owner"`
	TTLms     int64  `json:"ttl_ms"`
	ExpiresAt string `json:"expires_at"`
	Deadline  string `json:"deadline"`
}

// printGrant prints a lease as JSON or as `export NAME='value'` lines that
// any POSIX shell can eval: exported, so that the lockctl a script runs next
// (renew, release) sees them, and single-quoted, so that no value can run
// anything.
func printGrant(g *global, gr client.Grant) {
	if g.json {
		writeJSON(g.stdout, grantOut{gr.Key, gr.LeaseID, gr.Token, gr.Owner, gr.TTL.Milliseconds(), lease.Format(gr.ExpiresAt), lease.Format(gr.Deadline)})
		return
	}
	for _, kv := range [][2]string{
		{"LOCKD_KEY", gr.Key}, {"LOCKD_TOKEN", strconv.FormatUint(gr.Token, 10)},
		{"LOCKD_LEASE_ID", gr.LeaseID}, {"LOCKD_DEADLINE", lease.Format(gr.Deadline)},
	} {
		fmt.Fprintf(g.stdout, "export %s=%s\n", kv[0], shellQuote(kv[1]))
	}
}

// shellQuote single-quotes s for a POSIX shell.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func writeJSON(w io.Writer, v any) {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func cmdAcquire(ctx context.Context, g *global, args []string) int {
	var a acquireFlags
	var idem string
	fs := flag.NewFlagSet("acquire", flag.ContinueOnError)
	a.register(fs, nil)
	fs.StringVar(&idem, "idempotency-key", "", "name this acquire so that running the same command again (its outcome unknown) gets the same grant; default: a fresh key, reused on lockctl's own retries")
	pos, tail, err := parse(g, fs, args, 1)
	if err != nil {
		return flagErr(g, "acquire", err)
	}
	if len(pos) != 1 || len(tail) != 0 {
		return usageErr(g, "acquire: want exactly one KEY")
	}
	if idem != "" && a.owner == "" {
		// The retry must send the same owner, and the default one names
		// this process.
		a.owner = strings.TrimRight(strings.TrimRight(defaultOwner(), "0123456789"), ":")
	}
	if code := a.check(g); code != exitOK {
		return code
	}
	c, err := g.client()
	if err != nil {
		return usageErr(g, "%v", err)
	}
	gr, err := c.AcquireLease(ctx, pos[0], client.AcquireOptions{TTL: a.ttl, Wait: a.wait, Owner: a.owner, IdempotencyKey: idem, LockDelay: a.lockDelay})
	if err != nil {
		return fail(g, "acquire "+pos[0], err)
	}
	printGrant(g, gr)
	return exitOK
}

// keyAndLease reads KEY and LEASE_ID from the arguments or the environment.
func keyAndLease(pos []string, getenv env) (key, id string, ok bool) {
	key, id = getenv("LOCKD_KEY"), getenv("LOCKD_LEASE_ID")
	if len(pos) > 0 {
		key = pos[0]
	}
	if len(pos) > 1 {
		id = pos[1]
	}
	return key, id, key != "" && id != ""
}

func cmdRenew(ctx context.Context, g *global, args []string, getenv env) int {
	var ttl time.Duration
	fs := flag.NewFlagSet("renew", flag.ContinueOnError)
	fs.DurationVar(&ttl, "ttl", 0, "new lease length (default: the server's)")
	pos, tail, err := parse(g, fs, args, 2)
	if err != nil {
		return flagErr(g, "renew", err)
	}
	key, id, ok := keyAndLease(pos, getenv)
	if !ok || len(tail) != 0 {
		return usageErr(g, "renew: want KEY LEASE_ID (or $LOCKD_KEY and $LOCKD_LEASE_ID)")
	}
	if ttl != 0 && (ttl < lease.MinTTL || ttl > lease.MaxTTL) {
		return usageErr(g, "--ttl %v out of range %v..%v", ttl, lease.MinTTL, lease.MaxTTL)
	}
	c, err := g.client()
	if err != nil {
		return usageErr(g, "%v", err)
	}
	gr, err := c.RenewLease(ctx, key, id, ttl)
	if err != nil {
		return fail(g, "renew "+key, err)
	}
	printGrant(g, gr)
	return exitOK
}

func cmdRelease(ctx context.Context, g *global, args []string, getenv env) int {
	fs := flag.NewFlagSet("release", flag.ContinueOnError)
	pos, tail, err := parse(g, fs, args, 2)
	if err != nil {
		return flagErr(g, "release", err)
	}
	key, id, ok := keyAndLease(pos, getenv)
	if !ok || len(tail) != 0 {
		return usageErr(g, "release: want KEY LEASE_ID (or $LOCKD_KEY and $LOCKD_LEASE_ID)")
	}
	c, err := g.client()
	if err != nil {
		return usageErr(g, "%v", err)
	}
	if err := c.ReleaseLease(ctx, key, id); err != nil {
		return fail(g, "release "+key, err)
	}
	if g.json {
		writeJSON(g.stdout, map[string]any{"key": key, "released": true})
	} else {
		fmt.Fprintf(g.stdout, "released %s\n", key)
	}
	return exitOK
}

type stateOut struct {
	Key       string `json:"key"`
	Held      bool   `json:"held"`
	Owner     string `json:"owner,omitempty"`
	Token     uint64 `json:"token,omitempty"`
	ExpiresAt string `json:"expires_at,omitempty"`
	Waiters   int    `json:"waiters"`
}

func toOut(s client.LockState) stateOut {
	o := stateOut{Key: s.Key, Held: s.Held, Waiters: s.Waiters}
	if s.Holder != nil {
		o.Owner, o.Token, o.ExpiresAt = s.Holder.Owner, s.Holder.Token, lease.Format(s.Holder.ExpiresAt)
	}
	return o
}

func cmdStatus(ctx context.Context, g *global, args []string) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	pos, tail, err := parse(g, fs, args, 1)
	if err != nil {
		return flagErr(g, "status", err)
	}
	if len(pos) != 1 || len(tail) != 0 {
		return usageErr(g, "status: want exactly one KEY")
	}
	c, err := g.client()
	if err != nil {
		return usageErr(g, "%v", err)
	}
	st, err := c.Inspect(ctx, pos[0])
	if err != nil {
		return fail(g, "status "+pos[0], err)
	}
	if g.json {
		writeJSON(g.stdout, toOut(st))
		return exitOK
	}
	if st.Holder != nil {
		fmt.Fprintf(g.stdout, "%s: held by %q, token %d, expires %s, %d waiting\n",
			st.Key, st.Holder.Owner, st.Holder.Token, lease.Format(st.Holder.ExpiresAt), st.Waiters)
	} else {
		fmt.Fprintf(g.stdout, "%s: free, %d waiting\n", st.Key, st.Waiters)
	}
	return exitOK
}

func cmdList(ctx context.Context, g *global, args []string) int {
	var prefix string
	fs := flag.NewFlagSet("list", flag.ContinueOnError)
	fs.StringVar(&prefix, "prefix", "", "only keys starting with this")
	pos, tail, err := parse(g, fs, args, 0)
	if err != nil {
		return flagErr(g, "list", err)
	}
	if len(pos) != 0 || len(tail) != 0 {
		return usageErr(g, "list: unexpected argument %q", strings.Join(tail, " "))
	}
	c, err := g.client()
	if err != nil {
		return usageErr(g, "%v", err)
	}
	locks, err := c.List(ctx, prefix)
	if err != nil {
		return fail(g, "list", err)
	}
	if g.json {
		out := make([]stateOut, 0, len(locks))
		for _, s := range locks {
			out = append(out, toOut(s))
		}
		writeJSON(g.stdout, out)
		return exitOK
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY\tTOKEN\tEXPIRES\tOWNER")
	for _, s := range locks {
		o := toOut(s)
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", o.Key, o.Token, o.ExpiresAt, o.Owner)
	}
	tw.Flush()
	return exitOK
}
