package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lockd/lockd/backend/etcd/embedded"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// syncBuffer collects lockd's log lines while it runs.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

const neverCompacted = "etcd has never compacted its history"

// An external etcd that compacts nothing on its own: lockd warns at start
// that nothing compacts, compacts it with --etcd-compact-every, and stops
// warning once the history was compacted.
func TestEtcdCompaction(t *testing.T) {
	emb, err := embedded.Start(t.Context(), embedded.Config{
		DataDir: filepath.Join(t.TempDir(), "etcd"), ClientURL: freeURL(t), PeerURL: freeURL(t),
		LogLevel: "fatal", NoCompaction: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { emb.Close() })
	cli, err := clientv3.New(clientv3.Config{Endpoints: emb.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	env := map[string]string{"LOCKD_LISTEN": "127.0.0.1:0", "LOCKD_ETCD_ENDPOINTS": strings.Join(emb.Endpoints(), ",")}
	startLog := func(extra ...string) (string, func() error) {
		t.Helper()
		e := map[string]string{}
		for k, v := range env {
			e[k] = v
		}
		for i := 0; i+1 < len(extra); i += 2 {
			e[extra[i]] = extra[i+1]
		}
		log := &syncBuffer{}
		_, _, stop := startLogging(t, e, log)
		return log.String(), stop
	}
	compactedRev1 := func() bool {
		_, err := cli.Get(ctxT(t), "/lockd/ping", clientv3.WithRev(1))
		return errors.Is(err, rpctypes.ErrCompacted)
	}

	log, stop := startLog()
	if !strings.Contains(log, neverCompacted) || !strings.Contains(log, "--etcd-compact-every") {
		t.Errorf("start over an uncompacted etcd logged %q; want the warning %q naming --etcd-compact-every", log, neverCompacted)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	log, stop = startLog("LOCKD_ETCD_COMPACT_EVERY", "100ms")
	if strings.Contains(log, neverCompacted) {
		t.Errorf("with --etcd-compact-every lockd warned %q", log)
	}
	// More writes than the compactor keeps, then it compacts revision 1 away.
	for i := range 2*embedded.DefaultCompactRetain + 100 {
		if _, err := cli.Put(ctxT(t), fmt.Sprint("/other/", i%10), "x"); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for !compactedRev1() {
		if time.Now().After(deadline) {
			t.Fatal("lockd with --etcd-compact-every=100ms did not compact within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	log, stop = startLog()
	if strings.Contains(log, neverCompacted) {
		t.Errorf("start over a compacted etcd warned %q", log)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func TestEtcdCompactFlag(t *testing.T) {
	// Through run, as an operator meets it.
	err := runToError(t, map[string]string{"LOCKD_LISTEN": "127.0.0.1:0", "LOCKD_DATA_DIR": t.TempDir(), "LOCKD_ETCD_COMPACT_EVERY": "1s"})
	if !strings.Contains(err.Error(), "applies to an external etcd") {
		t.Errorf("run with --etcd-compact-every and the embedded etcd: %v", err)
	}
}

// With etcd's authentication on, compaction needs the root role: lockd's
// least-privileged user is refused at start, with what to do instead; a
// root user compacts.
func TestEtcdCompactionNeedsRoot(t *testing.T) {
	s := startSecuredEtcd(t)
	env := s.env()
	env["LOCKD_ETCD_COMPACT_EVERY"] = "100ms"
	err := runToError(t, env)
	if !errors.Is(err, rpctypes.ErrPermissionDenied) || !strings.Contains(err.Error(), "needs the root role") || !strings.Contains(err.Error(), `user "lockd"`) {
		t.Errorf("start as user lockd with --etcd-compact-every: %v; want permission denied naming the root role and the user", err)
	}

	env["LOCKD_ETCD_USER"] = "root"
	env["LOCKD_ETCD_PASSWORD_FILE"] = writeFile(t, "root-password", "root-secret\n")
	log := &syncBuffer{}
	_, _, stop := startLogging(t, env, log)
	root := s.client(t, "root", "root-secret", s.lockd)
	for i := range 2*embedded.DefaultCompactRetain + 100 {
		if _, err := root.Put(ctxT(t), fmt.Sprint("/other/", i%10), "x"); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := root.Get(ctxT(t), "/other/0", clientv3.WithRev(1))
		if errors.Is(err, rpctypes.ErrCompacted) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lockd as root did not compact within 30s (read at revision 1: %v); lockd logged %q", err, log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
