package etcd

// Opening the backend from lockd's configuration: the embedded etcd or an
// external cluster, credentials, TLS, the start-up access check and what to
// say when any of it fails.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/lockd/lockd/backend/etcd/embedded"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
	"github.com/lockd/lockd/internal/tlsfiles"
)

// Config is what lockd's etcd flags say. Errors name those flags.
type Config struct {
	// Endpoints of an external cluster (--etcd-endpoints); none: start the
	// embedded etcd.
	Endpoints []string
	Prefix    string // --etcd-prefix; default /lockd/

	// The embedded etcd.
	DataDir        string // --data-dir
	EmbedClientURL string // --embed-etcd-client-url
	EmbedPeerURL   string // --embed-etcd-peer-url
	Debug          bool   // show the embedded etcd's own warnings

	// Credentials toward an external cluster.
	CA, Cert, Key string // --etcd-ca, --etcd-cert, --etcd-key
	User          string // --etcd-user
	PasswordFile  string // --etcd-password-file

	// CompactEvery: how often lockd compacts an external cluster
	// (--etcd-compact-every); 0: never.
	CompactEvery time.Duration

	Clock  lease.Clock
	Hooks  backend.Hooks
	Logger *slog.Logger // start-up warnings, the compactor
}

// dialTimeout bounds connecting and the start-up check.
const dialTimeout = 5 * time.Second

// creds is the checked form of the credential flags.
type creds struct {
	tls      *tls.Config // nil: plain http endpoints
	user     string      // "" : no password login
	password string
	certCN   string // the client certificate's CN, the etcd user when user is ""
}

// credentials validates the combination of the credential flags and loads
// their files.
func (c Config) credentials(endpoints []string) (creds, error) {
	var cr creds
	given := c.CA != "" || c.Cert != "" || c.Key != "" || c.User != "" || c.PasswordFile != ""
	if len(endpoints) == 0 {
		if given {
			return cr, errors.New("--etcd-ca, --etcd-cert, --etcd-key, --etcd-user and --etcd-password-file apply to an external etcd (--etcd-endpoints); the embedded etcd takes none")
		}
		return cr, nil
	}
	https := 0
	for _, ep := range endpoints {
		if strings.HasPrefix(ep, "https://") {
			https++
		}
	}
	if https != 0 && https != len(endpoints) {
		return cr, fmt.Errorf("--etcd-endpoints %q mixes https:// and plain endpoints; the etcd client uses one scheme for all", strings.Join(endpoints, ","))
	}
	if (c.Cert == "") != (c.Key == "") {
		return cr, errors.New("--etcd-cert and --etcd-key go together: give both or neither")
	}
	if https == 0 && (c.CA != "" || c.Cert != "") {
		return cr, errors.New("--etcd-ca and --etcd-cert need https:// --etcd-endpoints (e.g. https://etcd-1:2379)")
	}
	if (c.User == "") != (c.PasswordFile == "") {
		return cr, errors.New("--etcd-user and --etcd-password-file go together: give both or neither")
	}
	if c.User != "" {
		data, err := os.ReadFile(c.PasswordFile)
		if err != nil {
			return cr, fmt.Errorf("--etcd-password-file: %w", err)
		}
		cr.user = c.User
		cr.password = strings.TrimSuffix(strings.TrimSuffix(string(data), "\n"), "\r")
		if cr.password == "" {
			return cr, fmt.Errorf("--etcd-password-file %s is empty", c.PasswordFile)
		}
	}
	if https == 0 {
		return cr, nil
	}
	var err error
	if cr.tls, err = tlsfiles.Client(tlsfiles.Files{CA: c.CA, Cert: c.Cert, Key: c.Key, CAFlag: "etcd-ca", CertFlag: "etcd-cert", KeyFlag: "etcd-key"}); err != nil {
		return cr, err
	}
	if certs := cr.tls.Certificates; len(certs) > 0 {
		if leaf, err := x509.ParseCertificate(certs[0].Certificate[0]); err == nil {
			cr.certCN = leaf.Subject.CommonName
		}
	}
	return cr, nil
}

// checkCompaction refuses --etcd-compact-every where it cannot apply.
func (c Config) checkCompaction(endpoints []string) error {
	switch {
	case c.CompactEvery < 0:
		return errors.New("--etcd-compact-every must be 0 (lockd does not compact) or more")
	case c.CompactEvery > 0 && len(endpoints) == 0:
		return errors.New("--etcd-compact-every applies to an external etcd (--etcd-endpoints); the embedded etcd compacts on its own")
	}
	return nil
}

// who names the etcd user lockd acts as, for error messages.
func (cr creds) who() string {
	switch {
	case cr.user != "":
		return fmt.Sprintf(" for user %q", cr.user)
	case cr.certCN != "":
		return fmt.Sprintf(" for the client certificate's user %q", cr.certCN)
	}
	return " without a user (give --etcd-user and --etcd-password-file, or a client certificate whose CN is an etcd user)"
}

// Open connects to the configured etcd cluster, or starts the embedded one
// when c.Endpoints is empty. Either way it refuses to return before a read
// and a (never applied) write under the prefix are allowed.
func Open(ctx context.Context, c Config) (backend.Opened, error) {
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if c.Prefix == "" {
		c.Prefix = "/lockd/"
	}
	endpoints := c.Endpoints
	if err := c.checkCompaction(endpoints); err != nil {
		return backend.Opened{}, err
	}
	creds, err := c.credentials(endpoints)
	if err != nil {
		return backend.Opened{}, err
	}
	var (
		closers  []func()
		describe string
	)
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	external := len(endpoints) > 0
	if !external {
		// etcd logs its own closed listeners as errors at every stop;
		// its log is shown only when lockd's is at debug.
		etcdLog := "fatal"
		if c.Debug {
			etcdLog = "warn"
		}
		emb, err := embedded.Start(ctx, embedded.Config{
			DataDir: c.DataDir, ClientURL: c.EmbedClientURL, PeerURL: c.EmbedPeerURL, LogLevel: etcdLog,
			Compact: embedded.CompactOptions{Logger: log},
		})
		if errors.Is(err, syscall.EADDRINUSE) {
			// Most often a second lockd on this machine.
			return backend.Opened{}, fmt.Errorf("%w: the embedded etcd's ports (--embed-etcd-client-url %s, --embed-etcd-peer-url %s) are taken, most likely by another lockd on this machine: to run a second replica, point it at the first one's etcd with --etcd-endpoints %s; to run an unrelated lockd, give it other --embed-etcd-client-url, --embed-etcd-peer-url and --data-dir",
				err, c.EmbedClientURL, c.EmbedPeerURL, strings.TrimPrefix(c.EmbedClientURL, "http://"))
		}
		if err != nil {
			return backend.Opened{}, err
		}
		closers = append(closers, func() { emb.Close() })
		endpoints = emb.Endpoints()
		abs, _ := filepath.Abs(c.DataDir)
		describe = fmt.Sprintf("etcd, embedded, data in %s, etcd clients on %s", abs, c.EmbedClientURL)
	} else {
		describe = "etcd at " + strings.Join(endpoints, ",")
		if creds.user != "" {
			describe += " as user " + creds.user
		} else if creds.certCN != "" {
			describe += " with client certificate " + creds.certCN
		}
		// A TLS failure shows in the etcd client only as a timeout: name it
		// first, when no endpoint completes a handshake.
		if creds.tls != nil {
			if err := probeTLS(ctx, endpoints, creds.tls); err != nil {
				return backend.Opened{}, err
			}
		}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: endpoints, DialTimeout: dialTimeout, Logger: zap.NewNop(), Context: ctx,
		TLS: creds.tls, Username: creds.user, Password: creds.password,
	})
	if err != nil {
		closeAll()
		return backend.Opened{}, startError(err, endpoints, c.Prefix, creds)
	}
	closers = append(closers, func() { cli.Close() })
	if err := checkAccess(ctx, cli, c.Prefix); err != nil {
		closeAll()
		return backend.Opened{}, startError(err, endpoints, c.Prefix, creds)
	}
	if creds.user != "" {
		actx, cancel := context.WithTimeout(ctx, dialTimeout)
		s, err := cli.AuthStatus(actx)
		cancel()
		if err == nil && !s.Enabled {
			describe += " (WARNING: etcd authentication is off, anyone who reaches etcd can change the locks)"
		}
	}
	switch {
	case external && c.CompactEvery > 0:
		if err := probeCompact(ctx, cli); err != nil {
			closeAll()
			if errors.Is(err, rpctypes.ErrPermissionDenied) {
				return backend.Opened{}, fmt.Errorf("--etcd-compact-every: etcd refuses to compact%s: with authentication on, compaction needs the root role; give lockd a root user, or drop the flag and run etcd's own auto-compaction (--auto-compaction-mode=revision): %w", creds.who(), err)
			}
			return backend.Opened{}, fmt.Errorf("--etcd-compact-every: etcd refuses to compact: %w", err)
		}
		comp := embedded.StartCompactor(cli, c.Prefix+"ping", embedded.CompactOptions{Every: c.CompactEvery, Logger: log})
		closers = append(closers, comp.Close) // closed before cli
		describe += fmt.Sprintf(", history compacted by lockd (looked at every %v)", c.CompactEvery)
	case external:
		warnIfNeverCompacted(ctx, cli, endpoints, c.Prefix, log)
	}
	b := New(cli, Options{Prefix: c.Prefix, Hooks: c.Hooks, Clock: c.Clock})
	return backend.Opened{Backend: b, Describe: describe, Close: func() { b.Close(); closeAll() }}, nil
}

// probeCompact asks etcd to compact to revision 1, which drops nothing,
// to learn at start whether lockd may compact at all.
func probeCompact(ctx context.Context, cli *clientv3.Client) error {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	if _, err := cli.Compact(ctx, 1); err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
		return err
	}
	return nil
}

// warnIfNeverCompacted warns when the cluster still keeps revision 1: it
// has never compacted its history, which then grows with every acquire
// until etcd's quota stops all writes. A cluster whose auto-compaction has
// not come round yet (etcd's first periodic one waits a whole retention
// period) is warned about too; the message says what to check.
func warnIfNeverCompacted(ctx context.Context, cli *clientv3.Client, endpoints []string, prefix string, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	r, err := cli.Get(ctx, prefix+"ping", clientv3.WithRev(1), clientv3.WithCountOnly())
	if err != nil {
		return // ErrCompacted: the history was compacted; anything else: no answer to go by
	}
	attrs := []any{"revision", r.Header.Revision}
	if s, err := cli.Status(ctx, endpoints[0]); err == nil {
		attrs = append(attrs, "db_size_bytes", s.DbSize, "quota_bytes", s.DbSizeQuota)
	}
	log.Warn("etcd has never compacted its history: unless it runs auto-compaction, its database grows with every acquire until etcd refuses all writes (NOSPACE) and lockd answers 503; run etcd with --auto-compaction-mode=revision --auto-compaction-retention=10000, or give lockd --etcd-compact-every=1s", attrs...)
}

// checkAccess reads the whole prefix range and sends a write that etcd
// checks but never applies: a transaction's permissions cover both branches,
// and a key's version is never negative.
func checkAccess(ctx context.Context, cli *clientv3.Client, prefix string) error {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	probe := prefix + "start-check"
	_, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Version(probe), "<", 0)).
		Then(clientv3.OpPut(probe, "")).
		Else(clientv3.OpGet(prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())).
		Commit()
	return err
}

// startError says what failed in words an operator can act on.
func startError(err error, endpoints []string, prefix string, creds creds) error {
	eps := strings.Join(endpoints, ",")
	switch {
	case errors.Is(err, rpctypes.ErrAuthFailed):
		return fmt.Errorf("etcd: authentication failed%s (check --etcd-user and --etcd-password-file): %w", creds.who(), err)
	case errors.Is(err, rpctypes.ErrPermissionDenied), errors.Is(err, rpctypes.ErrUserNotFound):
		return fmt.Errorf("etcd: permission denied on %s%s: its role needs readwrite on the prefix range (etcdctl role grant-permission <role> --prefix=true readwrite %s): %w", prefix, creds.who(), prefix, err)
	case errors.Is(err, rpctypes.ErrUserEmpty):
		return fmt.Errorf("etcd at %s has authentication on and lockd has no user: give --etcd-user and --etcd-password-file, or a client certificate whose CN is an etcd user: %w", eps, err)
	case errors.Is(err, context.DeadlineExceeded):
		hint := ""
		if creds.tls == nil {
			hint = " (an etcd serving TLS needs https:// endpoints)"
		}
		return fmt.Errorf("etcd: no answer from %s within %v%s: %w", eps, dialTimeout, hint, err)
	}
	return fmt.Errorf("etcd at %s: %w", eps, err)
}

// probeTLS makes a TLS handshake with every endpoint at once, and fails only
// when none completes one and at least one failed on TLS itself (an endpoint
// that is merely down is left to the etcd client, which may use the others).
func probeTLS(ctx context.Context, endpoints []string, conf *tls.Config) error {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	errs := make([]error, len(endpoints))
	var wg sync.WaitGroup
	for i, ep := range endpoints {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = handshake(ctx, ep, conf)
		}()
	}
	wg.Wait()
	var tlsErrs []error
	for i, err := range errs {
		if err == nil {
			return nil
		}
		if te := (tlsError{}); errors.As(err, &te) {
			tlsErrs = append(tlsErrs, fmt.Errorf("%s: %w", endpoints[i], err))
		}
	}
	if len(tlsErrs) == 0 {
		return nil
	}
	return fmt.Errorf("etcd: TLS handshake failed: %w", errors.Join(tlsErrs...))
}

// tlsError marks a failure of TLS itself, not of reaching the endpoint.
type tlsError struct{ err error }

func (e tlsError) Error() string {
	msg := e.err.Error()
	var unknown x509.UnknownAuthorityError
	switch {
	case errors.As(e.err, &unknown):
		msg += " (does --etcd-ca name the CA that signed etcd's certificate?)"
	case strings.Contains(msg, "certificate required"):
		msg += " (etcd requires a client certificate: --etcd-cert and --etcd-key)"
	case strings.Contains(msg, "bad certificate") || strings.Contains(msg, "unknown certificate authority"):
		msg += " (etcd refused the client certificate --etcd-cert)"
	}
	return msg
}

func (e tlsError) Unwrap() error { return e.err }

// handshake dials one endpoint and completes a TLS handshake. With TLS 1.3 a
// server refuses a client certificate only after the client's handshake is
// done, so it also sends the HTTP/2 preface and waits for the first answer.
func handshake(ctx context.Context, endpoint string, conf *tls.Config) error {
	u, err := url.Parse(endpoint)
	if err != nil {
		return err
	}
	raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return err
	}
	defer raw.Close()
	host, _, _ := net.SplitHostPort(u.Host)
	conf = conf.Clone()
	if conf.ServerName == "" {
		conf.ServerName = host
	}
	conn := tls.Client(raw, conf)
	if err := conn.HandshakeContext(ctx); err != nil {
		return tlsError{err}
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")); err != nil {
		return tlsError{err}
	}
	var buf [1]byte
	if _, err := conn.Read(buf[:]); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil // no answer is not a TLS failure; the etcd client will tell
		}
		var alert tls.AlertError
		if errors.As(err, &alert) || strings.Contains(err.Error(), "tls:") {
			return tlsError{err}
		}
		return err
	}
	return nil
}
