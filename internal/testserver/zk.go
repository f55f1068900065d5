package testserver

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Where Debian's zookeeper package puts the server. The JVM is started
// directly with the classpath zkServer.sh would build (the jar's manifest
// names its dependencies), so that the test owns the one process it kills and
// no script or log directory outside the temp dir is involved.
const (
	zkJar       = "/usr/share/java/zookeeper.jar"
	zkConfDir   = "/etc/zookeeper/conf"
	zkMainClass = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
	// The jar's manifest lists the netty jars the NIO server never loads but
	// not netty-codec, which Netty's TLS handler (a ByteToMessageDecoder)
	// needs: without it the Netty factory binds, then drops every connection
	// with NoClassDefFoundError.
	zkNettyCodecJar = "/usr/share/java/netty-codec.jar"
)

// zkStartTimeout bounds how long a member may take to serve (JVM start plus,
// for an ensemble, leader election) on a busy two-core machine.
const zkStartTimeout = 60 * time.Second

// ErrZooKeeperMissing is returned by StartZooKeeper when the zookeeper
// package or java is not installed.
var ErrZooKeeperMissing = errors.New("testserver: zookeeper (Debian package) or java not installed")

// ZKOptions configures StartZooKeeperWith. The zero value is the plain
// server StartZooKeeper makes.
type ZKOptions struct {
	// TLS, when set, makes every member serve clients only over TLS: its
	// one client port is ZooKeeper's secureClientPort (Netty connection
	// factory), and no plain clientPort is opened, so a client cannot fall
	// back to plain TCP. Peers still talk plain TCP. Default plain TCP.
	TLS *ZKTLS
}

// ZKTLS is how StartZooKeeperWith serves TLS.
type ZKTLS struct {
	// CA issues the members' certificate (valid for 127.0.0.1 and
	// localhost); clients trust it with CA.Pool() or CA.CertFile.
	CA *CA
	// AuthClients makes the members require a client certificate signed by
	// CA (ssl.clientAuth=need). Default no (ssl.clientAuth=none): any TLS
	// client is accepted.
	AuthClients bool
}

// ZK is a real ZooKeeper server or ensemble on loopback ports with its data
// in a temp dir. Members are numbered from 0.
type ZK struct {
	dir     string
	opts    ZKOptions
	members []*zkMember
	// keystore is the members' key and certificate in one PEM file, and
	// probe a client certificate the readiness check presents; both unset
	// without TLS.
	keystore string
	probe    *Issued
}

type zkMember struct {
	id         int // ZooKeeper's myid, 1-based
	dir        string
	cfg        string
	clientAddr string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// ZooKeeperAvailable reports whether StartZooKeeper can run here.
func ZooKeeperAvailable() bool {
	if _, err := os.Stat(zkJar); err != nil {
		return false
	}
	_, err := exec.LookPath("java")
	return err == nil
}

// ZooKeeper starts a server (n == 1) or an n-member ensemble for a test and
// stops it when the test ends. Without the zookeeper package the test is
// skipped, or fails when LOCKD_REQUIRE_SERVERS=1 (CI).
func ZooKeeper(tb testing.TB, n int) *ZK {
	tb.Helper()
	return ZooKeeperWith(tb, n, ZKOptions{})
}

// ZooKeeperWith is ZooKeeper with options (TLS).
func ZooKeeperWith(tb testing.TB, n int, opts ZKOptions) *ZK {
	tb.Helper()
	if !ZooKeeperAvailable() {
		Missing(tb, ErrZooKeeperMissing.Error()+"; install it with: apt-get install -y zookeeper")
	}
	z, err := StartZooKeeperWith(n, opts)
	if err != nil {
		tb.Fatalf("start ZooKeeper (%d members): %v", n, err)
	}
	tb.Cleanup(func() {
		if err := z.Close(); err != nil {
			tb.Logf("stop ZooKeeper: %v", err)
		}
	})
	return z
}

// StartZooKeeper starts a standalone server (n == 1) or an ensemble of n
// members and returns once every member serves clients. Close stops it.
func StartZooKeeper(n int) (*ZK, error) { return StartZooKeeperWith(n, ZKOptions{}) }

// StartZooKeeperWith is StartZooKeeper with options (TLS).
func StartZooKeeperWith(n int, opts ZKOptions) (*ZK, error) {
	if opts.TLS != nil {
		if opts.TLS.CA == nil {
			return nil, errors.New("testserver: ZKOptions.TLS needs a CA")
		}
		if _, err := os.Stat(zkNettyCodecJar); err != nil {
			return nil, fmt.Errorf("testserver: ZooKeeper TLS needs netty-codec (apt-get install -y libnetty-java): %w", err)
		}
	}
	if n < 1 {
		return nil, fmt.Errorf("testserver: ZooKeeper needs at least 1 member, got %d", n)
	}
	if !ZooKeeperAvailable() {
		return nil, ErrZooKeeperMissing
	}
	// The free ports are found before the JVMs bind them; on a machine
	// where other tests take ports too, one may be gone by then. Such a
	// start fails fast (the member exits): try again on other ports.
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var z *ZK
		if z, err = startZooKeeper(n, opts); err == nil {
			return z, nil
		}
	}
	return nil, err
}

func startZooKeeper(n int, opts ZKOptions) (*ZK, error) {
	dir, err := os.MkdirTemp("", "lockd-zk-")
	if err != nil {
		return nil, err
	}
	z := &ZK{dir: dir, opts: opts}
	if opts.TLS != nil {
		if err := z.writeKeystore(); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
	}
	ports, listeners, err := zkReservePorts(3 * n)
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	var servers strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&servers, "server.%d=127.0.0.1:%d:%d\n", i+1, ports[3*i+1], ports[3*i+2])
	}
	for i := 0; i < n; i++ {
		m := &zkMember{
			id:         i + 1,
			dir:        filepath.Join(dir, fmt.Sprint("m", i+1)),
			clientAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[3*i])),
		}
		m.cfg = filepath.Join(m.dir, "zoo.cfg")
		if err := m.writeConfig(ports[3*i], n, servers.String(), z.tlsConfig()); err != nil {
			zkCloseAll(listeners)
			os.RemoveAll(dir)
			return nil, err
		}
		z.members = append(z.members, m)
	}
	// The ports were held until now so that nobody else took them meanwhile.
	zkCloseAll(listeners)
	for _, m := range z.members {
		if err := m.start(); err != nil {
			z.Close()
			return nil, err
		}
	}
	for _, m := range z.members {
		if err := m.waitServing(zkStartTimeout, z.ClientTLS()); err != nil {
			z.Close()
			return nil, err
		}
	}
	return z, nil
}

// writeKeystore issues the members' certificate and writes it with its key
// as the one PEM file ZooKeeper's PEM key store reads. ZooKeeper's PEM
// reader takes a PKCS#8 key ("PRIVATE KEY"), not the SEC 1 form ("EC
// PRIVATE KEY") the CA writes for Go clients.
func (z *ZK) writeKeystore() error {
	ca := z.opts.TLS.CA
	// Named after the server's dir: two servers may share a CA's dir.
	name := "zk-" + filepath.Base(z.dir)
	cert, err := ca.Issue(name, "zookeeper", Loopback)
	if err != nil {
		return err
	}
	if z.probe, err = ca.Issue(name+"-probe", "testserver-probe"); err != nil {
		return err
	}
	key, err := x509.MarshalPKCS8PrivateKey(cert.TLS.PrivateKey)
	if err != nil {
		return err
	}
	pemKey := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key})
	pemCert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Cert.Raw})
	z.keystore = filepath.Join(z.dir, "keystore.pem")
	return os.WriteFile(z.keystore, append(pemKey, pemCert...), 0o600)
}

// tlsConfig is the zoo.cfg lines that make the client port TLS-only, or ""
// without TLS. Keys zoo.cfg does not know become system properties
// "zookeeper.<key>", which is where ZooKeeper reads these.
func (z *ZK) tlsConfig() string {
	t := z.opts.TLS
	if t == nil {
		return ""
	}
	auth := "none"
	if t.AuthClients {
		auth = "need"
	}
	return fmt.Sprintf(`serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory
ssl.keyStore.location=%s
ssl.keyStore.type=PEM
ssl.trustStore.location=%s
ssl.trustStore.type=PEM
ssl.clientAuth=%s
`, z.keystore, t.CA.CertFile, auth)
}

// ClientTLS is a TLS config that trusts the members' CA and presents a
// client certificate from it; nil when they serve plain TCP.
func (z *ZK) ClientTLS() *tls.Config {
	if z.opts.TLS == nil {
		return nil
	}
	return &tls.Config{RootCAs: z.opts.TLS.CA.Pool(), Certificates: []tls.Certificate{z.probe.TLS}, MinVersion: tls.VersionTLS12}
}

// writeConfig writes the member's zoo.cfg and, in an ensemble, its myid.
// With tlsCfg (ZK.tlsConfig) the client port is a secureClientPort and no
// plain one is opened.
func (m *zkMember) writeConfig(clientPort, n int, servers, tlsCfg string) error {
	data := filepath.Join(m.dir, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		return err
	}
	// Short ticks make leader election and session expiry quick enough for
	// tests; sessions may still ask for up to 30 s. forceSync=no skips the
	// fsync per write: a SIGKILLed JVM loses nothing that reached the page
	// cache, and tests measure ZooKeeper, not this machine's disk.
	cfg := fmt.Sprintf(`tickTime=200
initLimit=50
syncLimit=15
minSessionTimeout=400
maxSessionTimeout=30000
dataDir=%s
maxClientCnxns=0
forceSync=no
preAllocSize=1024
admin.enableServer=false
4lw.commands.whitelist=*
`, data)
	if tlsCfg == "" {
		cfg += fmt.Sprintf("clientPort=%d\nclientPortAddress=127.0.0.1\n", clientPort)
	} else {
		// ZooKeeper refuses clientPortAddress without clientPort.
		cfg += fmt.Sprintf("secureClientPort=%d\nsecureClientPortAddress=127.0.0.1\n", clientPort) + tlsCfg
	}
	if n > 1 {
		cfg += "standaloneEnabled=false\n" + servers
		if err := os.WriteFile(filepath.Join(data, "myid"), []byte(strconv.Itoa(m.id)+"\n"), 0o644); err != nil {
			return err
		}
	}
	return os.WriteFile(m.cfg, []byte(cfg), 0o644)
}

func (m *zkMember) start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		return fmt.Errorf("testserver: ZooKeeper member %d already running", m.id)
	}
	out, err := os.OpenFile(filepath.Join(m.dir, "server.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command("java",
		"-Xms32m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
		"-Dzookeeper.admin.enableServer=false",
		"-Dzookeeper.log.dir="+m.dir,
		// Empty container nodes (lock parents) are reaped every second
		// instead of every minute, so tests can see them go.
		"-Dznode.container.checkIntervalMs=1000",
		"-Dznode.container.maxPerMinute=100000",
		"-cp", zkConfDir+":"+zkJar+":"+zkNettyCodecJar,
		zkMainClass, m.cfg)
	cmd.Dir = m.dir
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, so Kill reaches every process it starts, and
	// killed with us should the test binary die without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		return fmt.Errorf("testserver: start ZooKeeper member %d: %w", m.id, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		out.Close()
		close(done)
	}()
	m.cmd, m.done = cmd, done
	return nil
}

// waitServing polls the four-letter word srvr until the member reports a
// mode (standalone, leader or follower): only then does it serve sessions.
func (m *zkMember) waitServing(timeout time.Duration, tlsConf *tls.Config) error {
	deadline := time.Now().Add(timeout)
	for {
		m.mu.Lock()
		done := m.done
		m.mu.Unlock()
		select {
		case <-done:
			return fmt.Errorf("testserver: ZooKeeper member %d exited during startup; see %s", m.id, filepath.Join(m.dir, "server.log"))
		default:
		}
		if mode, err := zkMode(m.clientAddr, tlsConf); err == nil && mode != "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("testserver: ZooKeeper member %d not serving on %s after %v; see %s", m.id, m.clientAddr, timeout, filepath.Join(m.dir, "server.log"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// zkMode returns the Mode line of srvr ("standalone", "leader", "follower"),
// or "" while the server does not serve requests. With tlsConf it asks over
// TLS: the Netty server answers four-letter words on its secure port too.
func zkMode(addr string, tlsConf *tls.Config) (string, error) {
	var (
		c   net.Conn
		err error
	)
	if tlsConf != nil {
		c, err = tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", addr, tlsConf)
	} else {
		c, err = net.DialTimeout("tcp", addr, time.Second)
	}
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("srvr")); err != nil {
		return "", err
	}
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		if mode, ok := strings.CutPrefix(sc.Text(), "Mode: "); ok {
			return strings.TrimSpace(mode), nil
		}
	}
	return "", sc.Err()
}

// Addrs returns the client addresses (host:port) of all members, running or
// not, in member order.
func (z *ZK) Addrs() []string {
	addrs := make([]string, len(z.members))
	for i, m := range z.members {
		addrs[i] = m.clientAddr
	}
	return addrs
}

// Addr returns member i's client address.
func (z *ZK) Addr(i int) string { return z.members[i].clientAddr }

// Mode returns member i's current role ("standalone", "leader", "follower"),
// or an error when it does not serve.
func (z *ZK) Mode(i int) (string, error) {
	mode, err := zkMode(z.members[i].clientAddr, z.ClientTLS())
	if err == nil && mode == "" {
		err = fmt.Errorf("testserver: ZooKeeper member %d not serving", i)
	}
	return mode, err
}

// Leader returns the index of the ensemble's current leader (0 for a
// standalone server), or -1 when no member says it leads.
func (z *ZK) Leader() int {
	for i := range z.members {
		if mode, err := zkMode(z.members[i].clientAddr, z.ClientTLS()); err == nil && (mode == "leader" || mode == "standalone") {
			return i
		}
	}
	return -1
}

// Kill SIGKILLs member i's process group and waits until it is gone.
func (z *ZK) Kill(i int) error {
	m := z.members[i]
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.cmd = nil
	m.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("testserver: kill ZooKeeper member %d: %w", m.id, err)
	}
	<-done
	return nil
}

// Signal sends sig to member i's process group (SIGSTOP/SIGCONT to pause it).
func (z *ZK) Signal(i int, sig syscall.Signal) error {
	m := z.members[i]
	m.mu.Lock()
	cmd := m.cmd
	m.mu.Unlock()
	if cmd == nil {
		return fmt.Errorf("testserver: ZooKeeper member %d is not running", m.id)
	}
	return syscall.Kill(-cmd.Process.Pid, sig)
}

// Restart starts a killed member again on the same ports and data and waits
// until it serves.
func (z *ZK) Restart(i int) error {
	if err := z.Kill(i); err != nil {
		return err
	}
	m := z.members[i]
	if err := m.start(); err != nil {
		return err
	}
	return m.waitServing(zkStartTimeout, z.ClientTLS())
}

// Close kills every member and removes the data.
func (z *ZK) Close() error {
	var errs []error
	for i := range z.members {
		errs = append(errs, z.Kill(i))
	}
	errs = append(errs, os.RemoveAll(z.dir))
	return errors.Join(errs...)
}

// zkReservePorts holds n distinct free loopback ports open until the caller
// closes the listeners.
func zkReservePorts(n int) ([]int, []net.Listener, error) {
	var ports []int
	var ls []net.Listener
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			zkCloseAll(ls)
			return nil, nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, ls, nil
}

func zkCloseAll(ls []net.Listener) {
	for _, l := range ls {
		l.Close()
	}
}
