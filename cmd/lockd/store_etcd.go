package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
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

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/lockd/lockd/backend"
	etcdb "github.com/lockd/lockd/backend/etcd"
	"github.com/lockd/lockd/internal/lease"
)

// etcdConfig is what --backend etcd is told.
type etcdConfig struct {
	dataDir        string
	endpoints      string
	prefix         string
	embedClientURL string
	embedPeerURL   string
	// Credentials toward an external cluster.
	ca           string
	cert         string
	key          string
	user         string
	passwordFile string
	clock        lease.Clock // from --max-clock-skew
	// compactEvery: how often lockd compacts an external cluster; 0: never.
	compactEvery time.Duration
}

func (c *etcdConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.dataDir, "data-dir", "./lockd-data", "embedded etcd's data directory (etcd without --etcd-endpoints)")
	fs.StringVar(&c.endpoints, "etcd-endpoints", "", "comma-separated host:port or https://host:port of an etcd cluster to use instead of the embedded one")
	fs.StringVar(&c.prefix, "etcd-prefix", "/lockd/", "prefix of every key lockd writes in etcd")
	fs.StringVar(&c.embedClientURL, "embed-etcd-client-url", "http://127.0.0.1:2379", "where the embedded etcd serves clients, without TLS or authentication: keep it on loopback; a second lockd replica on this host can use it as --etcd-endpoints")
	fs.StringVar(&c.embedPeerURL, "embed-etcd-peer-url", "http://127.0.0.1:2380", "the embedded etcd's peer URL")
	fs.StringVar(&c.ca, "etcd-ca", "", "CA certificate (PEM) to trust for https:// --etcd-endpoints instead of the system's roots")
	fs.StringVar(&c.cert, "etcd-cert", "", "client certificate (PEM) for etcd's --client-cert-auth; with etcd authentication on and no --etcd-user, its CN is the etcd user")
	fs.StringVar(&c.key, "etcd-key", "", "the client certificate's private key (PEM)")
	fs.StringVar(&c.user, "etcd-user", "", "etcd user (RBAC) lockd logs in as; needs readwrite on the --etcd-prefix range")
	fs.StringVar(&c.passwordFile, "etcd-password-file", "", "file holding --etcd-user's password (one trailing newline is ignored)")
	fs.DurationVar(&c.compactEvery, "etcd-compact-every", 0, fmt.Sprintf("look this often (e.g. 1s) and compact the external etcd's history to its last %d revisions once as many more were written; compaction is cluster-wide, for every key. 0: lockd does not compact, and the cluster must (etcd --auto-compaction-mode=revision). The embedded etcd always compacts", etcdb.DefaultCompactRetain))
}

// etcdTimeout bounds connecting and the start-up check.
const etcdTimeout = 5 * time.Second

// etcdCreds is the checked form of the credential flags.
type etcdCreds struct {
	tls      *tls.Config // nil: plain http endpoints
	user     string      // "" : no password login
	password string
	certCN   string // the client certificate's CN, the etcd user when user is ""
}

// credentials validates the combination of the credential flags and loads
// their files.
func (c etcdConfig) credentials(endpoints []string) (etcdCreds, error) {
	var cr etcdCreds
	given := c.ca != "" || c.cert != "" || c.key != "" || c.user != "" || c.passwordFile != ""
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
	if (c.cert == "") != (c.key == "") {
		return cr, errors.New("--etcd-cert and --etcd-key go together: give both or neither")
	}
	if https == 0 && (c.ca != "" || c.cert != "") {
		return cr, errors.New("--etcd-ca and --etcd-cert need https:// --etcd-endpoints (e.g. https://etcd-1:2379)")
	}
	if (c.user == "") != (c.passwordFile == "") {
		return cr, errors.New("--etcd-user and --etcd-password-file go together: give both or neither")
	}
	if c.user != "" {
		data, err := os.ReadFile(c.passwordFile)
		if err != nil {
			return cr, fmt.Errorf("--etcd-password-file: %w", err)
		}
		cr.user = c.user
		cr.password = strings.TrimSuffix(strings.TrimSuffix(string(data), "\n"), "\r")
		if cr.password == "" {
			return cr, fmt.Errorf("--etcd-password-file %s is empty", c.passwordFile)
		}
	}
	if https == 0 {
		return cr, nil
	}
	var err error
	if cr.tls, err = clientTLS("etcd-ca", c.ca, "etcd-cert", c.cert, "etcd-key", c.key); err != nil {
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
func (c etcdConfig) checkCompaction(endpoints []string) error {
	switch {
	case c.compactEvery < 0:
		return errors.New("--etcd-compact-every must be 0 (lockd does not compact) or more")
	case c.compactEvery > 0 && len(endpoints) == 0:
		return errors.New("--etcd-compact-every applies to an external etcd (--etcd-endpoints); the embedded etcd compacts on its own")
	}
	return nil
}

// who names the etcd user lockd acts as, for error messages.
func (cr etcdCreds) who() string {
	switch {
	case cr.user != "":
		return fmt.Sprintf(" for user %q", cr.user)
	case cr.certCN != "":
		return fmt.Sprintf(" for the client certificate's user %q", cr.certCN)
	}
	return " without a user (give --etcd-user and --etcd-password-file, or a client certificate whose CN is an etcd user)"
}

// openEtcd connects to the configured etcd cluster, or starts the embedded
// one when no endpoints are given. Either way it refuses to return before a
// read and a (never applied) write under the prefix are allowed.
func openEtcd(ctx context.Context, c etcdConfig, logLevel string, hooks backend.Hooks, log *slog.Logger) (*store, error) {
	endpoints := splitList(c.endpoints)
	if err := c.checkCompaction(endpoints); err != nil {
		return nil, err
	}
	creds, err := c.credentials(endpoints)
	if err != nil {
		return nil, err
	}
	st := &store{}
	external := len(endpoints) > 0
	if !external {
		// etcd logs its own closed listeners as errors at every stop;
		// its log is shown only when lockd's is at debug.
		etcdLog := "fatal"
		if logLevel == "debug" {
			etcdLog = "warn"
		}
		emb, err := etcdb.StartEmbedded(ctx, etcdb.EmbedConfig{
			DataDir: c.dataDir, ClientURL: c.embedClientURL, PeerURL: c.embedPeerURL, LogLevel: etcdLog,
			Compact: etcdb.CompactOptions{Logger: log},
		})
		if errors.Is(err, syscall.EADDRINUSE) {
			// Most often a second lockd on this machine.
			return nil, fmt.Errorf("%w: the embedded etcd's ports (--embed-etcd-client-url %s, --embed-etcd-peer-url %s) are taken, most likely by another lockd on this machine: to run a second replica, point it at the first one's etcd with --etcd-endpoints %s; to run an unrelated lockd, give it other --embed-etcd-client-url, --embed-etcd-peer-url and --data-dir",
				err, c.embedClientURL, c.embedPeerURL, strings.TrimPrefix(c.embedClientURL, "http://"))
		}
		if err != nil {
			return nil, err
		}
		st.closers = append(st.closers, func() { emb.Close() })
		endpoints = emb.Endpoints()
		abs, _ := filepath.Abs(c.dataDir)
		st.describe = fmt.Sprintf("etcd, embedded, data in %s, etcd clients on %s", abs, c.embedClientURL)
	} else {
		st.describe = "etcd at " + strings.Join(endpoints, ",")
		if creds.user != "" {
			st.describe += " as user " + creds.user
		} else if creds.certCN != "" {
			st.describe += " with client certificate " + creds.certCN
		}
		// A TLS failure shows in the etcd client only as a timeout: name it
		// first, when no endpoint completes a handshake.
		if creds.tls != nil {
			if err := probeTLS(ctx, endpoints, creds.tls); err != nil {
				return nil, err
			}
		}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: endpoints, DialTimeout: etcdTimeout, Logger: zap.NewNop(), Context: ctx,
		TLS: creds.tls, Username: creds.user, Password: creds.password,
	})
	if err != nil {
		st.close()
		return nil, etcdStartError(err, endpoints, c.prefix, creds)
	}
	st.closers = append(st.closers, func() { cli.Close() })
	if err := checkEtcdAccess(ctx, cli, c.prefix); err != nil {
		st.close()
		return nil, etcdStartError(err, endpoints, c.prefix, creds)
	}
	if creds.user != "" {
		actx, cancel := context.WithTimeout(ctx, etcdTimeout)
		s, err := cli.AuthStatus(actx)
		cancel()
		if err == nil && !s.Enabled {
			st.describe += " (WARNING: etcd authentication is off, anyone who reaches etcd can change the locks)"
		}
	}
	switch {
	case external && c.compactEvery > 0:
		if err := probeCompact(ctx, cli); err != nil {
			st.close()
			if errors.Is(err, rpctypes.ErrPermissionDenied) {
				return nil, fmt.Errorf("--etcd-compact-every: etcd refuses to compact%s: with authentication on, compaction needs the root role; give lockd a root user, or drop the flag and run etcd's own auto-compaction (--auto-compaction-mode=revision): %w", creds.who(), err)
			}
			return nil, fmt.Errorf("--etcd-compact-every: etcd refuses to compact: %w", err)
		}
		comp := etcdb.StartCompactor(cli, c.prefix+"ping", etcdb.CompactOptions{Every: c.compactEvery, Logger: log})
		st.closers = append(st.closers, comp.Close) // closed before cli
		st.describe += fmt.Sprintf(", history compacted by lockd (looked at every %v)", c.compactEvery)
	case external:
		warnIfNeverCompacted(ctx, cli, endpoints, c.prefix, log)
	}
	st.b = etcdb.New(cli, etcdb.Options{Prefix: c.prefix, Hooks: hooks, Clock: c.clock})
	return st, nil
}

// probeCompact asks etcd to compact to revision 1, which drops nothing,
// to learn at start whether lockd may compact at all.
func probeCompact(ctx context.Context, cli *clientv3.Client) error {
	ctx, cancel := context.WithTimeout(ctx, etcdTimeout)
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
	ctx, cancel := context.WithTimeout(ctx, etcdTimeout)
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

// checkEtcdAccess reads the whole prefix range and sends a write that etcd
// checks but never applies: a transaction's permissions cover both branches,
// and a key's version is never negative.
func checkEtcdAccess(ctx context.Context, cli *clientv3.Client, prefix string) error {
	ctx, cancel := context.WithTimeout(ctx, etcdTimeout)
	defer cancel()
	probe := prefix + "start-check"
	_, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Version(probe), "<", 0)).
		Then(clientv3.OpPut(probe, "")).
		Else(clientv3.OpGet(prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())).
		Commit()
	return err
}

// etcdStartError says what failed in words an operator can act on.
func etcdStartError(err error, endpoints []string, prefix string, creds etcdCreds) error {
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
		return fmt.Errorf("etcd: no answer from %s within %v%s: %w", eps, etcdTimeout, hint, err)
	}
	return fmt.Errorf("etcd at %s: %w", eps, err)
}

// probeTLS makes a TLS handshake with every endpoint at once, and fails only
// when none completes one and at least one failed on TLS itself (an endpoint
// that is merely down is left to the etcd client, which may use the others).
func probeTLS(ctx context.Context, endpoints []string, conf *tls.Config) error {
	ctx, cancel := context.WithTimeout(ctx, etcdTimeout)
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
