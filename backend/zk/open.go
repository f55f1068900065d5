package zk

// Opening the backend from lockd's configuration: credentials, TLS, the
// start-up access check and what to say when any of it fails.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
	"github.com/lockd/lockd/internal/tlsfiles"
)

// Config is what lockd's --zk-* flags say. Errors name those flags.
type Config struct {
	Servers        []string      // --zk-servers
	Root           string        // --zk-root
	SessionTimeout time.Duration // --zk-session-timeout
	ConnectTimeout time.Duration // --zk-connect-timeout: how long Open tries to get a session
	User           string        // --zk-user (digest)
	PasswordFile   string        // --zk-password-file
	TLS            bool          // --zk-tls
	TLSCA          string        // --zk-tls-ca
	TLSCert        string        // --zk-tls-cert
	TLSKey         string        // --zk-tls-key

	Clock  lease.Clock
	Hooks  backend.Hooks
	Logger *slog.Logger // start-up warnings
}

// tlsConfig loads the TLS files the flags name; nil without --zk-tls.
func (c Config) tlsConfig() (*tls.Config, error) {
	if !c.TLS {
		if c.TLSCA != "" || c.TLSCert != "" || c.TLSKey != "" {
			return nil, errors.New("--zk-tls-ca, --zk-tls-cert and --zk-tls-key need --zk-tls")
		}
		return nil, nil
	}
	return tlsfiles.Client(tlsfiles.Files{CA: c.TLSCA, Cert: c.TLSCert, Key: c.TLSKey,
		CAFlag: "zk-tls-ca", CertFlag: "zk-tls-cert", KeyFlag: "zk-tls-key"})
}

// explainDial says what an operator has to change when no server gave
// lockd a session; "" when the error does not point at TLS.
func explainDial(err error, conf *tls.Config) string {
	var (
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
	)
	switch {
	case errors.Is(err, ErrServerWantsTLS):
		return "the server speaks only TLS on this port (a secureClientPort): give --zk-tls, and --zk-tls-ca unless the system's roots sign its certificate"
	case errors.Is(err, ErrServerNotTLS):
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
func (c Config) digest() (*Digest, error) {
	switch {
	case c.User == "" && c.PasswordFile == "":
		return nil, nil
	case c.User == "":
		return nil, errors.New("--zk-password-file needs --zk-user")
	case c.PasswordFile == "":
		return nil, fmt.Errorf("--zk-user %q needs --zk-password-file (lockd takes no password on its command line)", c.User)
	}
	raw, err := os.ReadFile(c.PasswordFile)
	if err != nil {
		return nil, fmt.Errorf("--zk-password-file: %w", err)
	}
	d := &Digest{User: c.User, Password: strings.TrimSuffix(strings.TrimSuffix(string(raw), "\n"), "\r")}
	if d.Password == "" {
		return nil, fmt.Errorf("--zk-password-file %s is empty", c.PasswordFile)
	}
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("--zk-user: %w", err)
	}
	return d, nil
}

// Open connects to ZooKeeper, over TLS with c.TLS and with digest auth when
// c.User is given, and refuses to return unless lockd can create and read
// under c.Root.
func Open(ctx context.Context, c Config) (backend.Opened, error) {
	log := c.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if len(c.Servers) == 0 {
		return backend.Opened{}, errors.New("--backend zk needs --zk-servers host:port,...")
	}
	d, err := c.digest()
	if err != nil {
		return backend.Opened{}, err
	}
	tlsConf, err := c.tlsConfig()
	if err != nil {
		return backend.Opened{}, err
	}
	dctx, cancel := context.WithTimeout(ctx, c.ConnectTimeout)
	defer cancel()
	conn, err := DialTLS(dctx, c.Servers, c.SessionTimeout, tlsConf)
	if err != nil {
		if why := explainDial(err, tlsConf); why != "" {
			return backend.Opened{}, fmt.Errorf("%s: %w", why, err)
		}
		return backend.Opened{}, err
	}
	opts := Options{Root: c.Root, Hooks: c.Hooks, Clock: c.Clock}
	describe := "zk at " + strings.Join(c.Servers, ",")
	if tlsConf != nil {
		describe += " over TLS"
	}
	describe += " under " + c.Root
	if d != nil {
		if err := d.AddAuth(conn); err != nil {
			conn.Close()
			return backend.Opened{}, err
		}
		opts.ACL = d.ACL()
		describe += " as digest user " + d.User
	} else {
		describe += " without auth: znodes world-writable"
	}
	b := New(conn, opts)
	if err := b.CheckAccess(dctx); err != nil {
		b.Close()
		if d != nil {
			return backend.Opened{}, fmt.Errorf("--zk-user %q (password from %s): %w", d.User, c.PasswordFile, err)
		}
		if errors.Is(err, ErrNoPermission) {
			return backend.Opened{}, fmt.Errorf("no --zk-user given, and %s is not open to clients without credentials: %w", c.Root, err)
		}
		return backend.Opened{}, err
	}
	if d == nil {
		log.Warn("NO --zk-user: every znode lockd creates is world-writable; anyone who reaches ZooKeeper can read, steal or delete locks. Give lockd --zk-user and --zk-password-file", "zk_root", c.Root)
	} else if acl, err := b.RootACL(dctx); err == nil {
		for _, a := range acl {
			if a.Scheme == "world" && a.Perms&(zk.PermCreate|zk.PermDelete) != 0 {
				log.Warn("--zk-root is open to world:anyone: anyone can add or remove key nodes there (lock nodes lockd creates stay its own); restrict it with zkCli setAcl", "zk_root", c.Root)
			}
		}
	}
	return backend.Opened{Backend: b, Describe: describe, Close: func() { b.Close() }}, nil
}
