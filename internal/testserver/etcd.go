package testserver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	etcdb "github.com/lockd/lockd/backend/etcd"
)

// Etcd is an in-process etcd cluster (one member or several) on free
// loopback ports. Embedded etcd needs no binary, so it never skips.
type Etcd struct {
	dir     string
	mu      sync.Mutex
	members []*etcdMember
}

type etcdMember struct {
	cfg     etcdb.EmbedConfig
	running *etcdb.Embedded // nil while stopped
}

// StartEtcd starts an n-member cluster in a temp dir and returns once every
// member serves. Close stops it and removes the dir.
func StartEtcd(n int) (*Etcd, error) {
	dir, err := os.MkdirTemp("", "lockd-etcd-")
	if err != nil {
		return nil, err
	}
	e := &Etcd{dir: dir}
	var peers []string
	for i := 0; i < n; i++ {
		cp, err1 := freePort()
		pp, err2 := freePort()
		if err1 != nil || err2 != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("testserver: free ports: %v %v", err1, err2)
		}
		m := &etcdMember{cfg: etcdb.EmbedConfig{
			DataDir:      filepath.Join(dir, fmt.Sprint("m", i)),
			Name:         fmt.Sprint("m", i),
			ClientURL:    fmt.Sprintf("http://127.0.0.1:%d", cp),
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
	for _, err := range errs {
		if err != nil {
			e.Close()
			return nil, err
		}
	}
	return e, nil
}

// EtcdCluster starts an n-member cluster for a test and stops it when the test ends.
func EtcdCluster(tb testing.TB, n int) *Etcd {
	tb.Helper()
	e, err := StartEtcd(n)
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
	emb, err := etcdb.StartEmbedded(context.Background(), m.cfg)
	if err != nil {
		return fmt.Errorf("etcd member %d: %w", i, err)
	}
	e.mu.Lock()
	m.running = emb
	e.mu.Unlock()
	return nil
}

// Endpoints returns every member's client address (host:port).
func (e *Etcd) Endpoints() []string {
	var out []string
	for _, m := range e.members {
		out = append(out, strings.TrimPrefix(m.cfg.ClientURL, "http://"))
	}
	return out
}

// Endpoint returns member i's client address.
func (e *Etcd) Endpoint(i int) string {
	return strings.TrimPrefix(e.members[i].cfg.ClientURL, "http://")
}

// StopMember stops member i's server, as a crashed member would be.
func (e *Etcd) StopMember(i int) {
	e.mu.Lock()
	m := e.members[i]
	emb := m.running
	m.running = nil
	e.mu.Unlock()
	if emb != nil {
		emb.Close()
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
