package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/lockd/lockd/backend"
	zkb "github.com/lockd/lockd/backend/zk"
	"github.com/lockd/lockd/internal/lease"
)

// zkConfig is what --backend zk is told.
type zkConfig struct {
	clock        lease.Clock // from --max-clock-skew
	servers      string
	root         string
	session      time.Duration
	connect      time.Duration
	user         string
	passwordFile string
	tls          bool
	tlsCA        string
	tlsCert      string
	tlsKey       string
}

func (c *zkConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.servers, "zk-servers", "", "comma-separated host:port of the ZooKeeper ensemble (--backend zk)")
	fs.StringVar(&c.root, "zk-root", "/lockd", "znode under which lock nodes live (--backend zk)")
	fs.DurationVar(&c.session, "zk-session-timeout", 10*time.Second, "ZooKeeper session timeout (--backend zk)")
	fs.DurationVar(&c.connect, "zk-connect-timeout", 10*time.Second, "how long lockd tries to get a ZooKeeper session at start before it gives up and says why (--backend zk)")
	fs.StringVar(&c.user, "zk-user", "", "ZooKeeper digest user; every znode lockd creates is then readable and writable by this user alone (needs --zk-password-file). Without it znodes are world-writable")
	fs.StringVar(&c.passwordFile, "zk-password-file", "", "file holding the --zk-user password (one line; a trailing newline is ignored)")
	fs.BoolVar(&c.tls, "zk-tls", false, "talk TLS to ZooKeeper: --zk-servers are then the servers' secureClientPort")
	fs.StringVar(&c.tlsCA, "zk-tls-ca", "", "with --zk-tls: CA certificate (PEM) that signed the ZooKeeper servers' certificates (default: the system's roots)")
	fs.StringVar(&c.tlsCert, "zk-tls-cert", "", "with --zk-tls: client certificate (PEM) for servers with ssl.clientAuth=need")
	fs.StringVar(&c.tlsKey, "zk-tls-key", "", "with --zk-tls: the client certificate's private key (PEM)")
}

// tlsConfig loads the TLS files the flags name; nil without --zk-tls.
func (c zkConfig) tlsConfig() (*tls.Config, error) {
	if !c.tls {
		if c.tlsCA != "" || c.tlsCert != "" || c.tlsKey != "" {
			return nil, errors.New("--zk-tls-ca, --zk-tls-cert and --zk-tls-key need --zk-tls")
		}
		return nil, nil
	}
	return clientTLS("zk-tls-ca", c.tlsCA, "zk-tls-cert", c.tlsCert, "zk-tls-key", c.tlsKey)
}

// explainZKDial says what an operator has to change when no server gave
// lockd a session; "" when the error does not point at TLS.
func explainZKDial(err error, conf *tls.Config) string {
	var (
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
	)
	switch {
	case errors.Is(err, zkb.ErrServerWantsTLS):
		return "the server speaks only TLS on this port (a secureClientPort): give --zk-tls, and --zk-tls-ca unless the system's roots sign its certificate"
	case errors.Is(err, zkb.ErrServerNotTLS):
		return "TLS: the server does not speak TLS on this port, it answers plain TCP (drop --zk-tls, or use its secureClientPort)"
	case errors.As(err, &unknownCA):
		return "TLS: the server's certificate is not signed by a CA lockd trusts (--zk-tls-ca)"
	case errors.As(err, &hostname):
		return "TLS: the server's certificate does not name the host lockd dials (--zk-servers must use a name or IP in the certificate)"
	case errors.As(err, &invalid):
		return "TLS: the server's certificate is not valid"
	case conf != nil && strings.Contains(err.Error(), "remote error: tls: "):
		if len(conf.Certificates) == 0 {
			return "TLS: the server wants a client certificate (ssl.clientAuth=need): give --zk-tls-cert and --zk-tls-key"
		}
		return "TLS: the server refused lockd's client certificate (--zk-tls-cert is not signed by a CA in the server's ssl.trustStore?)"
	}
	return ""
}

// digest reads the credentials the flags name; nil when none are given.
func (c zkConfig) digest() (*zkb.Digest, error) {
	switch {
	case c.user == "" && c.passwordFile == "":
		return nil, nil
	case c.user == "":
		return nil, errors.New("--zk-password-file needs --zk-user")
	case c.passwordFile == "":
		return nil, fmt.Errorf("--zk-user %q needs --zk-password-file (lockd takes no password on its command line)", c.user)
	}
	raw, err := os.ReadFile(c.passwordFile)
	if err != nil {
		return nil, fmt.Errorf("--zk-password-file: %w", err)
	}
	d := &zkb.Digest{User: c.user, Password: strings.TrimSuffix(strings.TrimSuffix(string(raw), "\n"), "\r")}
	if d.Password == "" {
		return nil, fmt.Errorf("--zk-password-file %s is empty", c.passwordFile)
	}
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("--zk-user: %w", err)
	}
	return d, nil
}

// openZK connects to ZooKeeper, over TLS with --zk-tls and with digest auth
// when --zk-user is given, and refuses to start unless lockd can create and
// read under --zk-root.
func openZK(ctx context.Context, c zkConfig, hooks backend.Hooks, log *slog.Logger) (*store, error) {
	servers := splitList(c.servers)
	if len(servers) == 0 {
		return nil, errors.New("--backend zk needs --zk-servers host:port,...")
	}
	d, err := c.digest()
	if err != nil {
		return nil, err
	}
	tlsConf, err := c.tlsConfig()
	if err != nil {
		return nil, err
	}
	dctx, cancel := context.WithTimeout(ctx, c.connect)
	defer cancel()
	conn, err := zkb.DialTLS(dctx, servers, c.session, tlsConf)
	if err != nil {
		if why := explainZKDial(err, tlsConf); why != "" {
			return nil, fmt.Errorf("%s: %w", why, err)
		}
		return nil, err
	}
	opts := zkb.Options{Root: c.root, Hooks: hooks, Clock: c.clock}
	describe := "zk at " + strings.Join(servers, ",")
	if tlsConf != nil {
		describe += " over TLS"
	}
	describe += " under " + c.root
	if d != nil {
		if err := d.AddAuth(conn); err != nil {
			conn.Close()
			return nil, err
		}
		opts.ACL = d.ACL()
		describe += " as digest user " + d.User
	} else {
		describe += " without auth: znodes world-writable"
	}
	b := zkb.New(conn, opts)
	if err := b.CheckAccess(dctx); err != nil {
		b.Close()
		if d != nil {
			return nil, fmt.Errorf("--zk-user %q (password from %s): %w", d.User, c.passwordFile, err)
		}
		if errors.Is(err, zkb.ErrNoPermission) {
			return nil, fmt.Errorf("no --zk-user given, and %s is not open to clients without credentials: %w", c.root, err)
		}
		return nil, err
	}
	if d == nil {
		log.Warn("NO --zk-user: every znode lockd creates is world-writable; anyone who reaches ZooKeeper can read, steal or delete locks. Give lockd --zk-user and --zk-password-file", "zk_root", c.root)
	} else if acl, err := b.RootACL(dctx); err == nil {
		for _, a := range acl {
			if a.Scheme == "world" && a.Perms&(zk.PermCreate|zk.PermDelete) != 0 {
				log.Warn("--zk-root is open to world:anyone: anyone can add or remove key nodes there (lock nodes lockd creates stay its own); restrict it with zkCli setAcl", "zk_root", c.root)
			}
		}
	}
	return &store{b: b, describe: describe}, nil
}
