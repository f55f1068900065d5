package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/go-zookeeper/zk"
	goredis "github.com/redis/go-redis/v9"
	etcdversion "go.etcd.io/etcd/api/v3/version"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/lockd/lockd/backend"
	etcdb "github.com/lockd/lockd/backend/etcd"
	redisb "github.com/lockd/lockd/backend/redis"
	redlockb "github.com/lockd/lockd/backend/redis/redlock"
	zkb "github.com/lockd/lockd/backend/zk"
	"github.com/lockd/lockd/internal/lease"
	"github.com/lockd/lockd/internal/testserver"
)

// target is one column of the report: a backend of lockd, the store it needs,
// and the direct client libraries it is compared with.
type target struct {
	Name    string
	Server  string
	Install string // the command that installs the missing server
	// missing says why the server cannot run here ("" when it can).
	missing func() string
	// PerfMembers and FaultMembers size the deployments: the one every
	// scenario uses, and the one the member-kill scenario uses.
	PerfMembers, FaultMembers int
	start                     func(members int) (*deployment, error)
	// skipByDefault names scenarios this column leaves out of a run that
	// did not ask for them by name (-scenarios), and why.
	skipByDefault map[string]string
	// directs is how many direct client libraries the column measures
	// (for the run's plan; the deployment names them).
	directs int
}

// deployment is a running store and how to reach it.
type deployment struct {
	Addrs   []string
	Version string
	// newBackend connects a new lockd backend to the store through addrs
	// (the members' addresses, or proxies in front of them).
	// rt, when not nil, counts the requests the backend's client sends.
	newBackend func(addrs []string, rt *rtCounter) (backend.Backend, error)
	// clocked, when set, connects a lockd backend whose replica runs on
	// clk (a clock shifted to stand for a machine whose clock is off). Nil
	// when the backend's leases run on the store's clock.
	clocked func(addrs []string, clk lease.Clock) (backend.Backend, error)
	// signal sends a signal to member i's process (SIGSTOP, SIGCONT); nil
	// when the members are not processes of their own.
	signal func(i int, sig syscall.Signal) error
	// storeSize describes the store's size in its own terms (nil: no probe).
	storeSize func() string
	// rtHow says how requests are counted on this store's clients.
	rtHow   string
	directs []directLib
	kill    func(i int) error
	restart func(i int) error
	// victim picks the member a member-kill scenario kills (the leader
	// where the store has one).
	victim func() int
	close  func() error
	// noBackend, when set, says why lockd cannot run on this store in this
	// build; the direct libraries are still measured.
	noBackend string
	// noFIFO, when set, says why lockd's backend on this store does not
	// serve waiters in arrival order (as its conformance run declares); the
	// FIFO check does not apply then.
	noFIFO string
	// watchOrder, when set, starts a probe of the order the store queues
	// waiters in (storeorder.go); nil when the fencing token is that
	// order. orderHow says how it reads it.
	watchOrder func() (orderProbe, error)
	orderHow   string
	// inProcess: the store runs inside this process (embedded etcd).
	inProcess bool
	// notes are facts about this deployment the report must state.
	notes []string
}

// directLib is a direct client library baseline.
type directLib struct {
	Name string
	New  func(addrs []string, rt *rtCounter) (Locker, error)
}

func targets() []target {
	return []target{
		{
			Name: "etcd", Server: "etcd (embedded, in process)", Install: "none needed (embedded)",
			missing:     func() string { return "" },
			PerfMembers: 1, FaultMembers: 3,
			start: startEtcd,
		},
		{
			Name: "etcd-ext", Server: "3 × etcd (Debian etcd-server), separate processes", Install: "apt-get install -y etcd-server",
			missing:     etcdProcMissing,
			PerfMembers: 3, FaultMembers: 3,
			start: startEtcdExternal,
			skipByDefault: func() map[string]string {
				why := "left out of the default run to keep it within 30 minutes: it measures lockd's side, which the embedded etcd column shows; ask for it with -backends etcd-ext -scenarios NAME"
				m := map[string]string{}
				for _, n := range []string{"throughput", "roundtrips", "semaphores", "rwlocks", "scale", "pause", "waiter-vanish", "lost-replies", "election", "clock-skew"} {
					m[n] = why
				}
				return m
			}(),
		},
		{
			Name: "zk", Server: "ZooKeeper (Debian package)", Install: "apt-get install -y zookeeper default-jre-headless",
			missing: func() string {
				if !testserver.ZooKeeperAvailable() {
					return testserver.ErrZooKeeperMissing.Error()
				}
				return ""
			},
			PerfMembers: 1, FaultMembers: 3,
			start: startZK,
		},
		{
			Name: "redis", Server: "redis-server (Debian package), no persistence", Install: "apt-get install -y redis-server",
			missing:     redisMissing,
			PerfMembers: 1, FaultMembers: 1, directs: 2,
			start: startRedis,
		},
		{
			Name: "redlock", Server: "5 × redis-server (Debian package), no persistence", Install: "apt-get install -y redis-server",
			missing:     redisMissing,
			PerfMembers: 5, FaultMembers: 5,
			start: startRedlock,
		},
	}
}

func startZK(members int) (*deployment, error) {
	z, err := testserver.StartZooKeeper(members)
	if err != nil {
		return nil, err
	}
	d := &deployment{
		Addrs:      z.Addrs(),
		newBackend: zkConnect,
		clocked: func(addrs []string, clk lease.Clock) (backend.Backend, error) {
			conn, ev, err := zk.Connect(addrs, 4*time.Second, zk.WithLogInfo(false), zk.WithLogger(nopLogger{}))
			if err != nil {
				return nil, err
			}
			if err := waitZKConnected(ev, 15*time.Second); err != nil {
				conn.Close()
				return nil, err
			}
			return zkb.New(conn, zkb.Options{Root: "/lockd-compare", Clock: clk}), nil
		},
		rtHow:   "writes on a counting net.Conn under go-zookeeper (one per request; session pings included)",
		directs: []directLib{{Name: "zk.Lock", New: newZKLock}},
		kill:    z.Kill,
		restart: z.Restart,
		victim: func() int {
			if l := z.Leader(); l >= 0 {
				return l
			}
			return 0
		},
		close:     z.Close,
		storeSize: func() string { return zkSize(z.Addrs()) },
		signal:    z.Signal,
		notes:     []string{"lockd's zk backend dials with a 4 s session timeout; zk.Lock with 10 s."},
	}
	d.Version = zkVersion(z.Addrs()[0])
	return d, nil
}

// zkVersion asks a server with the srvr four-letter word.
func zkVersion(addr string) string {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	fmt.Fprint(c, "srvr")
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Zookeeper version: "); ok {
			v = strings.SplitN(v, ",", 2)[0]
			v, _, _ = strings.Cut(v, "-${") // an unexpanded build placeholder in Debian's jar
			return "ZooKeeper " + v
		}
	}
	return "unknown (srvr gave no version)"
}

func redisMissing() string {
	if !testserver.RedisAvailable() {
		return "redis-server is not installed"
	}
	return ""
}

func redisClient(addr string, rt *rtCounter) *goredis.Client {
	c := goredis.NewClient(&goredis.Options{Addr: addr})
	if rt != nil {
		c.AddHook(redisHook{c: rt})
	}
	return c
}

func startRedisSet(n int) (*testserver.RedisSet, *deployment, error) {
	set, err := testserver.StartRedis(n, testserver.RedisOptions{})
	if err != nil {
		return nil, nil, err
	}
	d := &deployment{
		Addrs:     set.Addrs(),
		Version:   redisVersion(),
		kill:      set.Kill,
		restart:   set.Restart,
		victim:    func() int { return 0 },
		close:     set.Close,
		storeSize: func() string { return redisSize(set.Addrs()) },
		signal:    set.Signal,
		rtHow:     "a go-redis hook (one per command, one per pipeline or script call)",
		notes:     []string{"redis-server runs with --save \"\" --appendonly no: a restarted server has lost every key; go-redis client timeouts are its defaults."},
	}
	return set, d, nil
}

func startRedis(members int) (*deployment, error) {
	_, d, err := startRedisSet(members)
	if err != nil {
		return nil, err
	}
	d.newBackend = redisConnect
	d.directs = []directLib{{Name: "SET NX PX", New: newSetNX}, {Name: "redsync (1 Redis)", New: newRedsync}}
	d.watchOrder = func() (orderProbe, error) { return startRedisMonitor(d.Addrs[0]) }
	d.orderHow = redisOrderHow
	d.notes = append(d.notes, "lockd's handoff and throughput rows on this Redis run with a MONITOR connection attached (the store-order probe): Redis copies every command to it, which costs lockd's rows some speed that the direct rows do not pay.")
	return d, nil
}

func startRedlock(members int) (*deployment, error) {
	_, d, err := startRedisSet(members)
	if err != nil {
		return nil, err
	}
	d.newBackend = redlockConnect
	d.directs = []directLib{{Name: "redsync (5 Redis)", New: newRedsync}}
	d.noFIFO = "Redlock has no queue: waiters retry with jittered back-off and whoever tries first after a release wins"
	return d, nil
}

// redisVersion asks the installed server binary.
func redisVersion() string {
	out, err := exec.Command("redis-server", "--version").Output()
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	for _, f := range strings.Fields(string(out)) {
		if v, ok := strings.CutPrefix(f, "v="); ok {
			return "Redis " + v
		}
	}
	return strings.TrimSpace(string(out))
}

func startEtcd(members int) (*deployment, error) {
	e, err := testserver.StartEtcd(members)
	if err != nil {
		return nil, err
	}
	d := &deployment{
		Addrs:      e.Endpoints(),
		Version:    "etcd " + etcdversion.Version + " (embedded)",
		inProcess:  true,
		newBackend: etcdConnect,
		clocked: func(addrs []string, clk lease.Clock) (backend.Backend, error) {
			cli, err := clientv3.New(clientv3.Config{Endpoints: addrs, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
			if err != nil {
				return nil, err
			}
			// Heartbeats 5× as often as lockd's default, so that a short
			// cell sees the offset.
			b := etcdb.New(cli, etcdb.Options{Prefix: "/lockd-compare/", Clock: clk, ClockHeartbeat: 200 * time.Millisecond})
			return etcdBackend{Backend: b, cli: cli}, nil
		},
		directs:   []directLib{{Name: "concurrency.Mutex", New: newEtcdMutex}},
		kill:      func(i int) error { e.StopMember(i); return nil },
		restart:   e.RestartMember,
		victim:    func() int { return etcdLeader(e.Endpoints()) },
		close:     e.Close,
		storeSize: func() string { return etcdSize(e.Endpoints()) },
		rtHow:     "a gRPC client interceptor (one per unary call, one per message sent on a stream: watches, lease keep-alives)",
		notes:     []string{"etcd members run inside this process, so a member \"kill\" is an in-process stop of the member (embed Close), not a SIGKILL; the restart reuses its data dir and ports."},
	}
	return d, nil
}

// etcdBackend closes the client the etcd backend was given (the backend
// leaves it open).
type etcdBackend struct {
	*etcdb.Backend
	cli *clientv3.Client
}

func (b etcdBackend) Close() error {
	err := b.Backend.Close()
	return errors.Join(err, b.cli.Close())
}

// etcdLeader finds the leader member by asking each member's status.
func etcdLeader(endpoints []string) int {
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return 0
	}
	defer cli.Close()
	for i, ep := range endpoints {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := cli.Status(ctx, ep)
		cancel()
		if err == nil && st.Header.MemberId == st.Leader {
			return i
		}
	}
	return 0
}

// The connections lockd's backends make to each store: the deployments'
// newBackend, and the lockd process of the scale scenario (lockdproc.go),
// which connects by target name.

func etcdConnect(addrs []string, rt *rtCounter) (backend.Backend, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: addrs, DialTimeout: 5 * time.Second, Logger: zap.NewNop(), DialOptions: grpcCounting(rt)})
	if err != nil {
		return nil, err
	}
	return etcdBackend{Backend: etcdb.New(cli, etcdb.Options{Prefix: "/lockd-compare/"}), cli: cli}, nil
}

func zkConnect(addrs []string, rt *rtCounter) (backend.Backend, error) {
	conn, ev, err := zk.Connect(addrs, 4*time.Second, zk.WithLogInfo(false), zk.WithLogger(nopLogger{}), zk.WithDialer(zkCountingDialer(rt)))
	if err != nil {
		return nil, err
	}
	if err := waitZKConnected(ev, 15*time.Second); err != nil {
		conn.Close()
		return nil, err
	}
	return zkb.New(conn, zkb.Options{Root: "/lockd-compare"}), nil
}

func redisConnect(addrs []string, rt *rtCounter) (backend.Backend, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return redisb.New(ctx, redisClient(addrs[0], rt), redisb.Options{Prefix: "lockd-compare:"})
}

func redlockConnect(addrs []string, rt *rtCounter) (backend.Backend, error) {
	var masters []goredis.UniversalClient
	for _, a := range addrs {
		masters = append(masters, redisClient(a, rt))
	}
	return redlockb.New(masters, redlockb.Options{Prefix: "lockd-compare:rl:"})
}

// connectByName connects a lockd backend to target name's store.
func connectByName(name string, addrs []string) (backend.Backend, error) {
	switch name {
	case "etcd", "etcd-ext":
		return etcdConnect(addrs, nil)
	case "zk":
		return zkConnect(addrs, nil)
	case "redis":
		return redisConnect(addrs, nil)
	case "redlock":
		return redlockConnect(addrs, nil)
	}
	return nil, fmt.Errorf("no backend named %q", name)
}
