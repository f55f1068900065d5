package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/lockd/lockd/backend"
	etcdb "github.com/lockd/lockd/backend/etcd"
	redisb "github.com/lockd/lockd/backend/redis"
	"github.com/lockd/lockd/backend/redis/redlock"
	zkb "github.com/lockd/lockd/backend/zk"
	"github.com/lockd/lockd/internal/auth"
	"github.com/lockd/lockd/internal/httpapi"
	"github.com/lockd/lockd/internal/lease"
	"github.com/lockd/lockd/internal/ui"
	"github.com/lockd/lockd/internal/version"
)

// clockEvery is how often a replica measures its clock against the
// backend's shared reference.
const clockEvery = 2 * time.Second

// reloadOnHangup rereads the tokens file on SIGHUP; a broken file keeps the
// tokens in force.
func reloadOnHangup(ctx context.Context, st *auth.Store, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			if err := st.Reload(); err != nil {
				log.Error("tokens file not reloaded; the previous tokens stay in force", "err", err)
			} else {
				log.Info("tokens file reloaded", "tokens", st.Size())
			}
		}
	}
}

// serverTLS builds the API's TLS config from the flags (nil: plain HTTP).
func serverTLS(c config) (*tls.Config, error) {
	if c.tlsCert == "" && c.tlsKey == "" {
		if c.tlsClientCA != "" {
			return nil, errors.New("--tls-client-ca needs --tls-cert and --tls-key")
		}
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.tlsCert, c.tlsKey)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	conf := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if c.tlsClientCA != "" {
		pem, err := os.ReadFile(c.tlsClientCA)
		if err != nil {
			return nil, fmt.Errorf("--tls-client-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--tls-client-ca: no certificate in %s", c.tlsClientCA)
		}
		conf.ClientCAs, conf.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return conf, nil
}

// config is everything lockd is told at start.
type config struct {
	lockDelay       time.Duration
	listen          string
	backend         string
	etcd            etcdFlags
	zk              zkFlags
	redis           redisFlags
	logLevel        string
	shutdownTimeout time.Duration
	authFile        string
	audit           bool
	tlsCert         string
	tlsKey          string
	tlsClientCA     string
	limits          httpapi.Limits
	maxConns        int
	headerTimeout   time.Duration
	readTimeout     time.Duration
	clock           lease.Clock
	idleTimeout     time.Duration
	http2Streams    int
	ui              bool
}

// envName is the environment variable that sets a flag: LOCKD_ and the flag
// name in upper snake case.
func envName(flagName string) string {
	return "LOCKD_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("lockd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.listen, "listen", "127.0.0.1:7070", "address to serve the HTTP API on (port 0: any free port)")
	fs.StringVar(&c.backend, "backend", "etcd", "lock store: etcd, zk, redis or redlock")
	c.etcd.register(fs)
	c.zk.register(fs)
	c.redis.register(fs)
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long a stop waits for requests in flight")
	fs.StringVar(&c.authFile, "auth-file", "", "tokens file (JSON) with each token's key prefixes and rights; reloaded on SIGHUP. Without it anyone may do anything")
	fs.BoolVar(&c.audit, "audit", false, "write one JSON audit line per grant, release, renew failure, expiry and refused request to stderr")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "serve HTTPS with this certificate (PEM)")
	fs.StringVar(&c.tlsKey, "tls-key", "", "the certificate's private key (PEM)")
	fs.StringVar(&c.tlsClientCA, "tls-client-ca", "", "require client certificates signed by this CA (PEM); their CN/DNS names map to cert_names in the tokens file")
	fs.IntVar(&c.limits.MaxWaiters, "max-waiters", 10000, "acquire long polls waiting at once on this lockd; more get 429 too_many_waiters (0: no limit)")
	fs.IntVar(&c.limits.MaxWaitersPerKey, "max-waiters-per-key", 1000, "long polls waiting at once for one key on this lockd; more get 429 too_many_waiters (0: no limit)")
	fs.IntVar(&c.limits.MaxStreams, "max-streams", 10000, "event streams (key events and election observers) open at once on this lockd; more get 429 too_many_streams (0: no limit)")
	fs.IntVar(&c.limits.MaxStreamsPerKey, "max-streams-per-key", 1000, "event streams open at once on one lock key or one election on this lockd; more get 429 too_many_streams (0: no limit)")
	fs.IntVar(&c.limits.LeasesPerPrincipal, "max-leases-per-principal", 0, "leases one caller (token, certificate, or everyone without --auth-file) holds at once through this lockd; more get 429 too_many_leases; max_leases in the tokens file overrides it (0: no limit)")
	fs.Float64Var(&c.limits.RatePerPrincipal, "rate-per-principal", 0, "requests per second one caller may make to this lockd, in bursts of up to one second's worth; more get 429 rate_limited with Retry-After; rate_per_sec in the tokens file overrides it (0: no limit)")
	fs.IntVar(&c.maxConns, "max-connections", 10000, "client connections open at once; one more is closed at accept (0: no limit; mind the process's file descriptor limit)")
	fs.DurationVar(&c.headerTimeout, "read-header-timeout", 10*time.Second, "a connection that has not sent a request's headers (and TLS handshake) in this time is closed")
	fs.DurationVar(&c.readTimeout, "read-body-timeout", 30*time.Second, "the time a client has to send a request's body (long polls then wait as long as they asked)")
	fs.DurationVar(&c.idleTimeout, "idle-timeout", 2*time.Minute, "an idle keep-alive connection is closed after this")
	fs.IntVar(&c.http2Streams, "http2-max-streams", 10000, "requests (long polls included) one HTTP/2 connection may have in flight at once; a client wanting more opens another connection")
	fs.DurationVar(&c.clock.MaxSkew, "max-clock-skew", lease.DefaultMaxSkew, "the most any two lockd replicas' clocks may differ (etcd, zk): a lock whose holder died is free this much later, and a replica more than half of it off the shared reference is not ready")
	fs.DurationVar(&c.lockDelay, "lock-delay", 0, "lock-delay of acquires and campaigns that do not send lock_delay_ms: after a grant expires (its holder stopped renewing, it was not released), nothing is granted in its place for this long after its deadline; applied on the primitives the backend delays (GET /v1/capabilities); 0..60s")
	fs.BoolVar(&c.ui, "ui", true, "serve the web console at /ui/ (it reads the API with the viewer's token; false: /ui/ answers 404)")
	showVersion := fs.Bool("version", false, "print lockd's version and exit")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: lockd [flags]\n\nServes the lockd HTTP lock API. Every flag can also be set with an environment\nvariable: LOCKD_ and the flag name in upper snake case (a flag on the command\nline wins).\n\n")
		fs.VisitAll(func(f *flag.Flag) {
			fmt.Fprintf(stderr, "  --%s (env %s, default %q)\n    \t%s\n", f.Name, envName(f.Name), f.DefValue, f.Usage)
		})
	}
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if v := getenv(envName(f.Name)); v != "" && envErr == nil {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = fmt.Errorf("%s=%q: %w", envName(f.Name), v, err)
			}
		}
	})
	if envErr != nil {
		return c, envErr
	}
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if *showVersion {
		return c, errVersion
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q (see --help)", fs.Args())
	}
	if c.limits.MaxWaiters < 0 || c.limits.MaxWaitersPerKey < 0 || c.limits.MaxStreams < 0 || c.limits.MaxStreamsPerKey < 0 || c.limits.LeasesPerPrincipal < 0 || c.limits.RatePerPrincipal < 0 || c.maxConns < 0 {
		return c, errors.New("limits must be 0 (no limit) or more")
	}
	switch c.backend {
	case "etcd", "zk", "redis", "redlock":
	default: // refused before anything binds a port
		return c, fmt.Errorf("unknown --backend %q: want etcd, zk, redis or redlock", c.backend)
	}
	if c.clock.MaxSkew < 0 || c.clock.MaxSkew > lease.MaxTTL {
		return c, fmt.Errorf("--max-clock-skew must be between 0 and %v", lease.MaxTTL)
	}
	c.etcd.c.Endpoints, c.etcd.c.Debug, c.etcd.c.Clock = splitList(c.etcd.endpoints), c.logLevel == "debug", c.clock
	c.zk.c.Servers, c.zk.c.Clock = splitList(c.zk.servers), c.clock
	c.redis.c.Addrs = splitList(c.redis.addrs)
	if c.headerTimeout <= 0 || c.readTimeout <= 0 || c.idleTimeout <= 0 {
		return c, errors.New("--read-header-timeout, --read-body-timeout and --idle-timeout must be more than 0")
	}
	if c.http2Streams <= 0 {
		return c, errors.New("--http2-max-streams must be more than 0")
	}
	if c.lockDelay < 0 || c.lockDelay > backend.MaxLockDelay || c.lockDelay%time.Millisecond != 0 {
		return c, fmt.Errorf("--lock-delay must be whole milliseconds between 0 and %v", backend.MaxLockDelay)
	}
	return c, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// openStore connects the configured backend. Adding a backend is one case.
func openStore(ctx context.Context, c config, hooks backend.Hooks, log *slog.Logger) (backend.Opened, error) {
	var (
		st  backend.Opened
		err error
	)
	switch c.backend {
	case "etcd":
		ec := c.etcd.c
		ec.Hooks, ec.Logger = hooks, log
		st, err = etcdb.Open(ctx, ec)
	case "zk":
		zc := c.zk.c
		zc.Hooks, zc.Logger = hooks, log
		st, err = zkb.Open(ctx, zc)
	case "redis", "redlock":
		rc := c.redis.c
		rc.Logger = log
		if c.backend == "redis" {
			st, err = redisb.Open(ctx, rc)
		} else {
			st, err = redlock.Open(ctx, rc)
		}
	default:
		return st, fmt.Errorf("unknown --backend %q: want etcd, zk, redis or redlock", c.backend)
	}
	if err != nil {
		return st, err
	}
	log.Debug("backend open", "backend", st.Describe)
	return st, nil
}

func newLogger(level string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// run is lockd: config → wire → serve, until ctx ends.
// errVersion: --version was asked for; run printed it.
var errVersion = errors.New("version printed")

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	c, err := parseFlags(args, getenv, stderr)
	if errors.Is(err, errVersion) {
		fmt.Fprintln(stdout, version.Get())
		return nil
	}
	if err != nil {
		return err
	}
	log, err := newLogger(c.logLevel, stderr)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		return err
	}
	defer ln.Close()

	var authStore *auth.Store
	if c.authFile != "" {
		if authStore, err = auth.Load(c.authFile); err != nil {
			return err
		}
		go reloadOnHangup(ctx, authStore, log)
	} else {
		log.Warn("NO --auth-file: every client may acquire, release and list every lock; give lockd a tokens file before sharing it")
	}
	var audit *slog.Logger
	if c.audit {
		audit = slog.New(slog.NewJSONHandler(stderr, nil)).With("log", "audit")
	}
	tlsConf, err := serverTLS(c)
	if err != nil {
		return err
	}

	metrics := httpapi.NewMetrics()
	hooks := backend.Hooks{OnExpire: func(e backend.Expiry) {
		metrics.Expired(e)
		if audit != nil {
			audit.Info("lock", "event", "expired", "key", e.Key, "owner", e.Owner, "token", e.Token)
		}
	}}
	st, err := openStore(ctx, c, hooks, log)
	if err != nil {
		return err
	}
	defer st.Close()

	api := httpapi.New(st.Backend, httpapi.Options{Backend: c.backend, Metrics: metrics, Logger: log, Auth: authStore, Audit: audit, Limits: c.limits, BodyTimeout: c.readTimeout, Clock: c.clock, LockDelay: c.lockDelay})
	if c.lockDelay > 0 {
		if f := backend.LockDelaysOf(st.Backend); !f.Locks || !f.Semaphores || !f.RWLocks || !f.Elections {
			log.Warn("--lock-delay applies only to the primitives this backend delays; the others get none", "backend", c.backend, "delays", f)
		}
	}
	go api.WatchClock(ctx, clockEvery)
	ln = metrics.LimitListener(ln, c.maxConns)
	var handler http.Handler = api
	if c.ui {
		handler = ui.With(api)
	}
	// HTTP/1.1, and HTTP/2 so that one connection carries many long polls:
	// h2 by ALPN over TLS, h2c with prior knowledge on the plain listener.
	// The stream limit is ours: Go's default (250) would make a client with
	// thousands of waits open a connection per 250.
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetHTTP2(true)
	protocols.SetUnencryptedHTTP2(tlsConf == nil)
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: c.headerTimeout,
		IdleTimeout:       c.idleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		TLSConfig:         tlsConf,
		Protocols:         &protocols,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: c.http2Streams},
	}
	scheme, serve := "http", func() error { return srv.Serve(ln) }
	if tlsConf != nil {
		// ServeTLS offers h2 and http/1.1 by ALPN (a listener wrapped in
		// tls.NewListener would offer neither).
		scheme, serve = "https", func() error { return srv.ServeTLS(ln, "", "") }
	}
	url := scheme + "://" + ln.Addr().String()
	fmt.Fprintf(stdout, "lockd listening on %s (backend: %s)\n", url, st.Describe)
	fmt.Fprintf(stdout, "try: curl -s -X POST %s/v1/locks/demo/acquire -H 'Content-Type: application/json' -d '{\"ttl_ms\": 15000}'\n", url)
	if c.ui {
		fmt.Fprintf(stdout, "web console: %s/ui/\n", url)
	}

	served := make(chan error, 1)
	go func() { served <- serve() }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	log.Info("stopping: long polls end with shutting_down, event streams with event: shutdown; held leases keep running in the store")
	api.Stopping()
	sctx, cancel := context.WithTimeout(context.Background(), c.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("requests still in flight at the stop were cut", "err", err)
		_ = srv.Close()
	}
	return nil
}
