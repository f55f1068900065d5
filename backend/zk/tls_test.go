package zk

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/backend/backendtest"
	"github.com/lockd/lockd/internal/testserver"
)

// tlsZK is a ZooKeeper that serves clients only over TLS and wants a client
// certificate from ca; client is one ca issued.
func tlsZK(t *testing.T) (z *testserver.ZK, ca *testserver.CA, client *tls.Config) {
	t.Helper()
	requireZK(t)
	ca = testserver.TestCA(t)
	z = testserver.ZooKeeperWith(t, 1, testserver.ZKOptions{TLS: &testserver.ZKTLS{CA: ca, AuthClients: true}})
	cert := ca.MustIssue(t, "lockd-client", "lockd")
	return z, ca, &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{cert.TLS}, MinVersion: tls.VersionTLS12}
}

// tlsDigestBackend is a replica of lockd run with TLS, a client
// certificate and --zk-user.
func tlsDigestBackend(t testing.TB, addrs []string, conf *tls.Config, root string) *Backend {
	t.Helper()
	conn, err := DialTLS(ctxFor(t, 30*time.Second), addrs, sessionTimeout, conf)
	if err != nil {
		t.Fatalf("DialTLS %v: %v", addrs, err)
	}
	if err := lockdDigest.AddAuth(conn); err != nil {
		conn.Close()
		t.Fatalf("AddAuth: %v", err)
	}
	b := New(conn, Options{Root: root, ACL: lockdDigest.ACL()})
	t.Cleanup(func() { b.Close() })
	return b
}

// Every promise of the contract holds over TLS with a client certificate
// and digest auth, the certificate checked against the IP lockd dials; the
// client reconnects over TLS, with its identity, after the server restarts.
func TestConformanceTLS(t *testing.T) {
	z, _, conf := tlsZK(t)
	root := uniqueRoot(t)
	b := tlsDigestBackend(t, z.Addrs(), conf, root)
	if err := b.CheckAccess(ctxFor(t, 10*time.Second)); err != nil {
		t.Fatalf("CheckAccess: %v", err)
	}
	backendtest.Run(t, func(t *testing.T) backend.Backend {
		return tlsDigestBackend(t, z.Addrs(), conf, root)
	}, backendtest.Options{NoIdempotency: noIdempotency})

	t.Run("ReconnectAfterServerRestart", func(t *testing.T) {
		key := uniqueKey(t)
		g, err := b.Acquire(ctxFor(t, 10*time.Second), backend.AcquireRequest{Key: key, TTL: 60 * time.Second})
		if err != nil {
			t.Fatalf("Acquire: %v", err)
		}
		if err := z.Restart(0); err != nil {
			t.Fatalf("Restart: %v", err)
		}
		waitFor(t, func() bool {
			_, err := b.Renew(ctxFor(t, 10*time.Second), key, g.LeaseID, 60*time.Second)
			if err != nil && !errors.Is(err, backend.ErrUnavailable) {
				t.Fatalf("Renew after the restart: %v", err)
			}
			return err == nil
		}, "a renew after the server restarted")
		if err := b.Release(ctxFor(t, 10*time.Second), key, g.LeaseID); err != nil {
			t.Fatalf("Release: %v", err)
		}
	})
}

// A TLS setup that cannot work fails Dial/DialTLS at once, with an error
// that says why, instead of retrying until the context ends.
func TestDialTLSRefusals(t *testing.T) {
	z, ca, conf := tlsZK(t)
	plain := sharedZK(t, 1)
	other := testserver.TestCA(t)
	noCert := &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12}
	foreign := other.MustIssue(t, "foreign", "lockd")
	withName := conf.Clone()
	withName.ServerName = "zk.example.org"
	for _, tc := range []struct {
		name  string
		addr  string
		conf  *tls.Config
		check func(error) bool
		want  string
	}{
		{"untrusted server certificate", z.Addr(0), &tls.Config{RootCAs: other.Pool(), Certificates: conf.Certificates, MinVersion: tls.VersionTLS12},
			func(err error) bool { var u x509.UnknownAuthorityError; return errors.As(err, &u) }, "x509.UnknownAuthorityError"},
		{"server certificate for another name", z.Addr(0), withName,
			func(err error) bool { var h x509.HostnameError; return errors.As(err, &h) }, "x509.HostnameError"},
		{"no client certificate", z.Addr(0), noCert,
			func(err error) bool { return strings.Contains(err.Error(), "remote error: tls: ") }, "a TLS alert from the server"},
		{"client certificate from another CA", z.Addr(0), &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{foreign.TLS}, MinVersion: tls.VersionTLS12},
			func(err error) bool { return strings.Contains(err.Error(), "remote error: tls: ") }, "a TLS alert from the server"},
		{"TLS to a plain port", plain.Addr(0), conf,
			func(err error) bool { return errors.Is(err, ErrServerNotTLS) }, "ErrServerNotTLS"},
		{"plain TCP to a TLS port", z.Addr(0), nil,
			func(err error) bool { return errors.Is(err, ErrServerWantsTLS) }, "ErrServerWantsTLS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			start := time.Now()
			conn, err := DialTLS(ctx, []string{tc.addr}, sessionTimeout, tc.conf)
			if err == nil {
				conn.Close()
				t.Fatalf("DialTLS %s: got a session, want a refusal", tc.addr)
			}
			t.Logf("after %v: %v", time.Since(start).Round(time.Millisecond), err)
			if ctx.Err() != nil {
				t.Errorf("DialTLS waited for its context to end; want it to give up on an error no retry fixes")
			}
			if !errors.Is(err, backend.ErrUnavailable) || !strings.Contains(err.Error(), tc.addr) {
				t.Errorf("error %q: want backend.ErrUnavailable naming %s", err, tc.addr)
			}
			if !tc.check(err) {
				t.Errorf("error %q: want %s", err, tc.want)
			}
		})
	}

	// A server that is down is no verdict: Dial waits for it, and then
	// names what it saw.
	t.Run("server down", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 1500*time.Millisecond)
		defer cancel()
		_, err := DialTLS(ctx, []string{"127.0.0.1:1"}, sessionTimeout, conf)
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "127.0.0.1:1: dial tcp") {
			t.Errorf("DialTLS to a closed port = %v; want the deadline and the dial error", err)
		}
	})
}

// Dial of a plain server is unchanged: a session, whatever the host
// provider resolves.
func TestDialPlain(t *testing.T) {
	z := sharedZK(t, 1)
	conn, err := Dial(ctxFor(t, 30*time.Second), z.Addrs(), sessionTimeout)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer conn.Close()
	if _, _, err := conn.Exists("/"); err != nil {
		t.Fatalf("Exists /: %v", err)
	}
	if conn.State() != zk.StateHasSession {
		t.Errorf("state %v, want %v", conn.State(), zk.StateHasSession)
	}
}

// With ssl.clientAuth=none any TLS client gets a session: the server's
// certificate is still checked, and digest auth is the only identity.
func TestDialTLSWithoutClientCertificate(t *testing.T) {
	requireZK(t)
	ca := testserver.TestCA(t)
	z := testserver.ZooKeeperWith(t, 1, testserver.ZKOptions{TLS: &testserver.ZKTLS{CA: ca}})
	conn, err := DialTLS(ctxFor(t, 30*time.Second), z.Addrs(), sessionTimeout, &tls.Config{RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("DialTLS without a client certificate: %v", err)
	}
	defer conn.Close()
	if _, _, err := conn.Exists("/"); err != nil {
		t.Fatalf("Exists /: %v", err)
	}
}
