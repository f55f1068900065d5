package zk

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/lockd/lockd/backend"
)

// ErrServerNotTLS is part of DialTLS's error when a server answered in plain
// TCP: the address is ZooKeeper's clientPort, not its secureClientPort.
var ErrServerNotTLS = errors.New("zk: the server does not speak TLS on this port")

// ErrServerWantsTLS is part of Dial's error when a server answered a TLS
// handshake and dropped plain connections: the address is a secureClientPort.
var ErrServerWantsTLS = errors.New("zk: the server speaks only TLS on this port")

// Dial connects to a ZooKeeper ensemble in plain TCP and waits until the
// client has a session, or until ctx ends.
//
// go-zookeeper retries servers forever and reports no connection error, so
// Dial notes each server's last one. When ctx ends, its error names them;
// when every server has answered in a way no retry changes (a TLS-only
// port), it returns at once.
func Dial(ctx context.Context, servers []string, sessionTimeout time.Duration) (*zk.Conn, error) {
	return DialTLS(ctx, servers, sessionTimeout, nil)
}

// DialTLS is Dial over TLS with conf (nil: plain TCP, as Dial): the servers'
// secureClientPort. When conf.ServerName is empty each server's certificate
// is checked against its host as written in servers (a name or an IP), so
// hosts are not resolved to addresses first as they are in plain TCP.
//
// It returns at once, with the certificate error, when every server refused
// lockd's certificate or presented one conf does not trust, or answered in
// plain TCP (ErrServerNotTLS).
func DialTLS(ctx context.Context, servers []string, sessionTimeout time.Duration, conf *tls.Config) (*zk.Conn, error) {
	rec := &connErrors{last: map[string]*connError{}}
	var hosts zk.HostProvider = zk.NewDNSHostProvider()
	dialer := rec.plainDialer
	if conf != nil {
		hosts = &namedHosts{}
		dialer = rec.tlsDialer(conf)
	}
	// go-zookeeper logs every failed connection attempt on its own; what
	// went wrong is recorded here and said once, so its lines go to the
	// debug level of the default logger.
	conn, events, err := zk.Connect(servers, sessionTimeout, zk.WithLogInfo(false), zk.WithLogger(debugLogger{}), zk.WithHostProvider(hosts), zk.WithDialer(dialer))
	if err != nil {
		return nil, fmt.Errorf("zk: connect %v: %w: %w", servers, backend.ErrUnavailable, err)
	}
	for conn.State() != zk.StateHasSession {
		if errs, final := rec.diagnose(conf != nil, hosts.Len()); final {
			conn.Close()
			return nil, fmt.Errorf("zk: no session with %v: %w: %w", servers, backend.ErrUnavailable, errors.Join(errs...))
		}
		select {
		case <-events:
		case <-ctx.Done():
			conn.Close()
			errs, _ := rec.diagnose(conf != nil, hosts.Len())
			return nil, fmt.Errorf("zk: no session with %v: %w: %w", servers, backend.ErrUnavailable, errors.Join(append([]error{ctx.Err()}, errs...)...))
		case <-time.After(50 * time.Millisecond):
		}
	}
	rec.stop()
	return conn, nil
}

// connErrors keeps, per server address, the first error of the latest
// connection to it, until the client has a session.
type connErrors struct {
	mu      sync.Mutex
	stopped bool
	last    map[string]*connError
}

type connError struct {
	err     error
	gen     int   // counts notes, so a diagnosis is not applied to a newer error
	probed  bool  // diagnosis ran on err
	verdict error // err, or what the diagnosis found; nil until probed
	final   bool  // no retry changes the verdict
}

func (r *connErrors) note(addr string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.stopped {
		return
	}
	e := r.last[addr]
	if e == nil {
		e = &connError{}
		r.last[addr] = e
	}
	e.err, e.probed, e.verdict, e.final = err, false, nil, false
	e.gen++
}

func (r *connErrors) stop() {
	r.mu.Lock()
	r.stopped = true
	r.mu.Unlock()
}

// diagnose explains each server's last error, probing the server where the
// error alone does not say what is wrong, and reports whether every one of n
// servers has failed in a way retrying does not change.
func (r *connErrors) diagnose(useTLS bool, n int) (errs []error, final bool) {
	type job struct {
		err     error
		gen     int
		verdict error
		final   bool
	}
	r.mu.Lock()
	todo := map[string]*job{}
	for addr, e := range r.last {
		if !e.probed {
			todo[addr] = &job{err: e.err, gen: e.gen}
		}
	}
	r.mu.Unlock()
	// Probes talk to the network: not under the lock.
	for addr, j := range todo {
		j.verdict, j.final = explain(addr, j.err, useTLS)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for addr, j := range todo {
		if e := r.last[addr]; e.gen == j.gen {
			e.probed, e.verdict, e.final = true, j.verdict, j.final
		}
	}
	finals := 0
	for addr, e := range r.last {
		verdict := e.verdict
		if verdict == nil {
			verdict = e.err
		}
		errs = append(errs, fmt.Errorf("%s: %w", addr, verdict))
		if e.final {
			finals++
		}
	}
	return errs, n > 0 && finals >= n
}

// explain turns a connection's error into what is wrong, and whether a
// retry could change it.
func explain(addr string, err error, useTLS bool) (error, bool) {
	if isCertificateError(err) {
		return err, true
	}
	var rec tls.RecordHeaderError
	if useTLS && errors.As(err, &rec) {
		return fmt.Errorf("%w: %w", ErrServerNotTLS, err), true
	}
	if !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
		return err, false
	}
	// The server hung up: ZooKeeper's answer to a client of the other
	// protocol (and to one over its connection limit). Ask in the other.
	if useTLS && speaksPlain(addr) {
		return fmt.Errorf("%w (it answers plain TCP): %w", ErrServerNotTLS, err), true
	}
	if !useTLS && speaksTLS(addr) {
		return fmt.Errorf("%w (it completed a TLS handshake and drops plain TCP): %w", ErrServerWantsTLS, err), true
	}
	return err, false
}

// isCertificateError reports a TLS failure that only a change of
// certificates or trust fixes: lockd distrusts the server's certificate, or
// the server sent an alert (it wants a client certificate, or distrusts
// lockd's).
func isCertificateError(err error) bool {
	var (
		verify   *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
	)
	if errors.As(err, &verify) || errors.As(err, &unknown) || errors.As(err, &hostname) || errors.As(err, &invalid) {
		return true
	}
	return strings.Contains(err.Error(), "remote error: tls: ")
}

// speaksPlain reports whether addr answers the four-letter word srvr in
// plain TCP. A server whose whitelist leaves srvr out still answers, with a
// refusal; a TLS port answers nothing, or a TLS alert record (0x15).
func speaksPlain(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("srvr")); err != nil {
		return false
	}
	b := make([]byte, 1)
	_, err = io.ReadFull(c, b)
	return err == nil && b[0] >= 0x20 && b[0] < 0x7f
}

// speaksTLS reports whether addr completes a TLS handshake. It sends no
// data and trusts nothing it receives: it only tells the protocol apart.
func speaksTLS(addr string) bool {
	d := &net.Dialer{Timeout: 2 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}) //nolint:gosec // a protocol probe: nothing is sent over it
	if err != nil {
		// A TLS 1.2 server that wants a client certificate refuses the
		// handshake with an alert: it speaks TLS all the same.
		return strings.Contains(err.Error(), "remote error: tls: ")
	}
	c.Close()
	return true
}

// handshakeTimeout bounds a TLS handshake. go-zookeeper gives a dial one
// second, which a busy server's first handshakes can exceed.
const handshakeTimeout = 5 * time.Second

func (r *connErrors) plainDialer(network, addr string, timeout time.Duration) (net.Conn, error) {
	c, err := net.DialTimeout(network, addr, timeout)
	if err != nil {
		r.note(addr, err)
		return nil, err
	}
	return &notingConn{Conn: c, addr: addr, rec: r}, nil
}

func (r *connErrors) tlsDialer(conf *tls.Config) zk.Dialer {
	return func(network, addr string, timeout time.Duration) (net.Conn, error) {
		raw, err := net.DialTimeout(network, addr, timeout)
		if err != nil {
			r.note(addr, err)
			return nil, err
		}
		cfg := conf.Clone()
		if cfg.ServerName == "" {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				raw.Close()
				return nil, err
			}
			cfg.ServerName = host
		}
		c := tls.Client(raw, cfg)
		_ = raw.SetDeadline(time.Now().Add(max(timeout, handshakeTimeout)))
		if err := c.Handshake(); err != nil {
			raw.Close()
			err = fmt.Errorf("TLS handshake: %w", err)
			r.note(addr, err)
			return nil, err
		}
		_ = raw.SetDeadline(time.Time{})
		return &notingConn{Conn: c, addr: addr, rec: r}, nil
	}
}

// notingConn notes its first read or write error: in TLS 1.3 a server that
// refuses lockd's client certificate says so after the handshake, in reply
// to the first request.
type notingConn struct {
	net.Conn
	addr string
	rec  *connErrors
	once sync.Once
}

func (c *notingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil {
		c.once.Do(func() { c.rec.note(c.addr, err) })
	}
	return n, err
}

func (c *notingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if err != nil {
		c.once.Do(func() { c.rec.note(c.addr, err) })
	}
	return n, err
}

// namedHosts is go-zookeeper's DNSHostProvider without the DNS: it hands the
// dialer each server as written, so that TLS checks the certificate against
// that name. The dialer resolves the name on every connection.
type namedHosts struct {
	mu         sync.Mutex
	servers    []string
	curr, last int
}

func (h *namedHosts) Init(servers []string) error {
	if len(servers) == 0 {
		return errors.New("zk: no servers")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.servers = append([]string(nil), servers...)
	// Shuffled, as go-zookeeper does, so replicas spread over the ensemble.
	rand.Shuffle(len(h.servers), func(i, j int) { h.servers[i], h.servers[j] = h.servers[j], h.servers[i] })
	h.curr, h.last = -1, -1
	return nil
}

func (h *namedHosts) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.servers)
}

// Next returns the next server, and whether every server has been tried
// since the last connection that worked (go-zookeeper then waits a second).
func (h *namedHosts) Next() (string, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.curr = (h.curr + 1) % len(h.servers)
	retryStart := h.curr == h.last
	if h.last == -1 {
		h.last = 0
	}
	return h.servers[h.curr], retryStart
}

func (h *namedHosts) Connected() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.last = h.curr
}

// debugLogger sends go-zookeeper's log lines to slog's default logger at
// debug level.
type debugLogger struct{}

func (debugLogger) Printf(format string, args ...any) {
	slog.Debug("zookeeper client: " + fmt.Sprintf(format, args...))
}
