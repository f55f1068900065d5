package testserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lockd/lockd/backend/etcd/embedded"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Etcd is an in-process etcd cluster (one member or several) on free
// loopback ports. Embedded etcd needs no binary, so it never skips.
type Etcd struct {
	dir     string
	opts    EtcdOptions
	server  *Issued // the members' client-facing certificate, with opts.CA
	root    *Issued // root's client certificate, with opts.CA
	mu      sync.Mutex
	members []*etcdMember
}

type etcdMember struct {
	cfg  embedded.Config
	stop func() // nil while stopped
}

// EtcdOptions secures a cluster the way a production one is. The zero value
// is the plain cluster StartEtcd makes.
type EtcdOptions struct {
	// CA, when set, makes every member serve clients on https:// with a
	// certificate CA issues for 127.0.0.1, and require a client certificate
	// CA issued (etcd's --client-cert-auth). Peers still talk plain HTTP.
	CA *CA
	// RootPassword, when set, creates user root with this password and turns
	// etcd's authentication on (RBAC) before the cluster is handed over.
	RootPassword string
	// AuthTokenTTL is how long an unused auth token stays valid (etcd's
	// --auth-token-ttl, whole seconds); default etcd's 300 s. A short one
	// makes clients log in again during a test, as a lockd idle for minutes
	// must.
	AuthTokenTTL time.Duration
}

// StartEtcd starts an n-member cluster in a temp dir and returns once every
// member serves. Close stops it and removes the dir.
func StartEtcd(n int) (*Etcd, error) { return StartEtcdWith(n, EtcdOptions{}) }

// StartEtcdWith is StartEtcd with client TLS and/or authentication on.
//
// A port found free may be bound by another process before the member
// binds it (parallel test packages pick from the same range); the whole
// cluster is then started again on fresh ports, a few times.
func StartEtcdWith(n int, opts EtcdOptions) (*Etcd, error) {
	var err error
	for attempt := 0; attempt < 4; attempt++ {
		var e *Etcd
		if e, err = startEtcdOnce(n, opts); err == nil || !portTaken(err) {
			return e, err
		}
	}
	return nil, err
}

// portTaken reports whether err is a listener's bind refused because the
// address is in use.
func portTaken(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}

// etcdPort picks a free loopback port for a member; a test replaces it to
// hand out a taken one.
var etcdPort = freePort

func startEtcdOnce(n int, opts EtcdOptions) (*Etcd, error) {
	dir, err := os.MkdirTemp("", "lockd-etcd-")
	if err != nil {
		return nil, err
	}
	e := &Etcd{dir: dir, opts: opts}
	scheme := "http"
	if opts.CA != nil {
		scheme = "https"
		if e.server, err = opts.CA.Issue("etcd-server-"+filepath.Base(dir), "etcd", Loopback); err == nil {
			e.root, err = opts.CA.Issue("etcd-root-"+filepath.Base(dir), "root")
		}
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	var peers []string
	for i := 0; i < n; i++ {
		cp, err1 := etcdPort()
		pp, err2 := etcdPort()
		if err1 != nil || err2 != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("testserver: free ports: %v %v", err1, err2)
		}
		m := &etcdMember{cfg: embedded.Config{
			DataDir:      filepath.Join(dir, fmt.Sprint("m", i)),
			Name:         fmt.Sprint("m", i),
			ClientURL:    fmt.Sprintf("%s://127.0.0.1:%d", scheme, cp),
			PeerURL:      fmt.Sprintf("http://127.0.0.1:%d", pp),
			ClusterToken: filepath.Base(dir),
			StartTimeout: 90 * time.Second,
			LogLevel:     "fatal", // a stopped member logs its closed listeners as errors
		}}
		peers = append(peers, m.cfg.Name+"="+m.cfg.PeerURL)
		e.members = append(e.members, m)
	}
	for _, m := range e.members {
		m.cfg.InitialCluster = strings.Join(peers, ",")
	}
	// Members of a new cluster wait for each other: start them together.
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range e.members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = e.start(i)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		e.Close()
		return nil, err
	}
	if opts.RootPassword != "" {
		if err := e.enableAuth(); err != nil {
			e.Close()
			return nil, err
		}
	}
	return e, nil
}

// enableAuth creates root and turns authentication on, as an operator does
// once per cluster; it is stored, so a restarted member keeps it.
func (e *Etcd) enableAuth() error {
	cli, err := e.Client("", "", e.root)
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.UserAdd(ctx, "root", e.opts.RootPassword); err != nil {
		return fmt.Errorf("testserver: etcd user add root: %w", err)
	}
	if _, err := cli.UserGrantRole(ctx, "root", "root"); err != nil {
		return fmt.Errorf("testserver: etcd grant root: %w", err)
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		return fmt.Errorf("testserver: etcd auth enable: %w", err)
	}
	return nil
}

// Client connects to every member as user (password auth; none when user is
// empty) presenting cert (none when nil) and trusting only the cluster's CA
// when it has one. The caller closes it.
func (e *Etcd) Client(user, password string, cert *Issued) (*clientv3.Client, error) {
	cfg := clientv3.Config{Endpoints: e.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop(), Username: user, Password: password}
	if e.opts.CA != nil {
		cfg.TLS = &tls.Config{RootCAs: e.opts.CA.Pool(), MinVersion: tls.VersionTLS12}
		if cert != nil {
			cfg.TLS.Certificates = []tls.Certificate{cert.TLS}
		}
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("testserver: etcd client as %q: %w", user, err)
	}
	return cli, nil
}

// RootClient is a client logged in as root; only for a cluster started with
// RootPassword.
func (e *Etcd) RootClient() (*clientv3.Client, error) {
	return e.Client("root", e.opts.RootPassword, e.root)
}

// EtcdCluster starts an n-member cluster for a test and stops it when the test ends.
func EtcdCluster(tb testing.TB, n int) *Etcd {
	tb.Helper()
	return EtcdClusterWith(tb, n, EtcdOptions{})
}

// EtcdClusterWith is EtcdCluster with client TLS and/or authentication on.
func EtcdClusterWith(tb testing.TB, n int, opts EtcdOptions) *Etcd {
	tb.Helper()
	e, err := StartEtcdWith(n, opts)
	if err != nil {
		tb.Fatalf("start etcd (%d members): %v", n, err)
	}
	tb.Cleanup(func() { e.Close() })
	return e
}

func (e *Etcd) start(i int) error {
	e.mu.Lock()
	m := e.members[i]
	e.mu.Unlock()
	var stop func()
	if e.opts == (EtcdOptions{}) {
		emb, err := embedded.Start(context.Background(), m.cfg)
		if err != nil {
			return fmt.Errorf("etcd member %d: %w", i, err)
		}
		stop = func() { emb.Close() }
	} else {
		emb, err := e.startSecured(m.cfg)
		if err != nil {
			return fmt.Errorf("etcd member %d: %w", i, err)
		}
		stop = emb.Close
	}
	e.mu.Lock()
	m.stop = stop
	e.mu.Unlock()
	return nil
}

// startSecured starts a member configured by e.opts. embedded.Config
// (lockd's own embedded etcd) has no TLS on purpose: it listens on loopback
// only.
func (e *Etcd) startSecured(c embedded.Config) (*embed.Etcd, error) {
	curl, err := url.Parse(c.ClientURL)
	if err != nil {
		return nil, err
	}
	purl, err := url.Parse(c.PeerURL)
	if err != nil {
		return nil, err
	}
	cfg := embed.NewConfig()
	cfg.Name, cfg.Dir = c.Name, c.DataDir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*curl}, []url.URL{*curl}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*purl}, []url.URL{*purl}
	cfg.InitialCluster, cfg.InitialClusterToken = c.InitialCluster, c.ClusterToken
	cfg.LogLevel, cfg.Logger = c.LogLevel, "zap"
	cfg.Metrics = "basic"
	// Every password login costs a bcrypt comparison; at etcd's default
	// cost, and under -race, a suite that opens a client per replica spends
	// seconds of CPU on them and starves its own timing.
	cfg.BcryptCost = 4 // bcrypt.MinCost
	if e.opts.AuthTokenTTL > 0 {
		cfg.AuthTokenTTL = uint((e.opts.AuthTokenTTL + time.Second - 1) / time.Second)
	}
	if e.opts.CA != nil {
		cfg.ClientTLSInfo.CertFile = e.server.CertFile
		cfg.ClientTLSInfo.KeyFile = e.server.KeyFile
		cfg.ClientTLSInfo.TrustedCAFile = e.opts.CA.CertFile
		cfg.ClientTLSInfo.ClientCertAuth = true
	}
	emb, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-emb.Server.ReadyNotify():
		return emb, nil
	case err := <-emb.Err():
		emb.Close()
		return nil, err
	case <-time.After(c.StartTimeout):
		emb.Close()
		return nil, fmt.Errorf("not serving after %v", c.StartTimeout)
	}
}

// Endpoints returns every member's client address (host:port).
func (e *Etcd) Endpoints() []string {
	var out []string
	for i := range e.members {
		out = append(out, e.Endpoint(i))
	}
	return out
}

// URLs returns every member's client URL (http:// or https://).
func (e *Etcd) URLs() []string {
	var out []string
	for _, m := range e.members {
		out = append(out, m.cfg.ClientURL)
	}
	return out
}

// Endpoint returns member i's client address.
func (e *Etcd) Endpoint(i int) string {
	u := e.members[i].cfg.ClientURL
	return strings.TrimPrefix(strings.TrimPrefix(u, "http://"), "https://")
}

// StopMember stops member i's server, as a crashed member would be.
func (e *Etcd) StopMember(i int) {
	e.mu.Lock()
	m := e.members[i]
	stop := m.stop
	m.stop = nil
	e.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// RestartMember starts a stopped member i again on its data and ports.
func (e *Etcd) RestartMember(i int) error { return e.start(i) }

// Close stops every member and removes the data.
func (e *Etcd) Close() error {
	for i := range e.members {
		e.StopMember(i)
	}
	return os.RemoveAll(e.dir)
}

// AddUser creates an etcd user with password and, unless prefix is empty, a
// role of the same name allowed to read and write the range of keys that
// start with prefix, and nothing else: the least privilege lockd needs.
func (e *Etcd) AddUser(name, password, prefix string) error {
	cli, err := e.RootClient()
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cli.UserAdd(ctx, name, password); err != nil {
		return fmt.Errorf("testserver: etcd user add %s: %w", name, err)
	}
	if prefix == "" {
		return nil
	}
	if _, err := cli.RoleAdd(ctx, name); err != nil {
		return fmt.Errorf("testserver: etcd role add %s: %w", name, err)
	}
	if _, err := cli.RoleGrantPermission(ctx, name, prefix, clientv3.GetPrefixRangeEnd(prefix), clientv3.PermissionType(clientv3.PermReadWrite)); err != nil {
		return fmt.Errorf("testserver: etcd role grant-permission %s: %w", name, err)
	}
	if _, err := cli.UserGrantRole(ctx, name, name); err != nil {
		return fmt.Errorf("testserver: etcd user grant-role %s: %w", name, err)
	}
	return nil
}
