// Package embedded runs an etcd member inside the process (lockd's default
// store, and the test helpers' clusters) and compacts an etcd cluster's
// history. It knows nothing of locks: backend/etcd keeps them, and this
// package must never import it.
package embedded

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/server/v3/embed"
)

// Config describes an etcd server run inside the lockd process.
type Config struct {
	DataDir string // where etcd keeps its data; required
	Name    string // member name; default "lockd"
	// ClientURL is where the member serves clients (a second lockd replica
	// points --etcd-endpoints at it); default http://127.0.0.1:2379.
	ClientURL string
	// PeerURL is where the member talks to its peers; default
	// http://127.0.0.1:2380.
	PeerURL string
	// InitialCluster lists every member as name=peerURL,...; default just
	// this member. Ignored once DataDir holds data.
	InitialCluster string
	// ClusterToken keeps two clusters bootstrapped side by side apart;
	// default "lockd".
	ClusterToken string
	// LogLevel is etcd's own log level; default "error" (etcd is chatty).
	LogLevel string
	// StartTimeout bounds the wait for the member to serve; default 60 s.
	StartTimeout time.Duration
	// Compact is how the member compacts its history (see Compactor);
	// default CompactOptions' defaults: it looks every 100 ms and keeps
	// 500 revisions. The member serves lockd, which reads history only to
	// resume a key's event stream (a resync once it is gone), so dropping
	// older revisions costs little.
	Compact CompactOptions
	// NoCompaction turns compaction off: only to measure what it saves.
	NoCompaction bool
	// QuotaBackendBytes is etcd's --quota-backend-bytes: the size of its
	// database file past which it refuses writes (NOSPACE); default etcd's
	// 2 GiB.
	QuotaBackendBytes int64
}

// Server is a running in-process etcd member.
type Server struct {
	etcd      *embed.Etcd
	endpoints []string
	compactor *Compactor // nil with NoCompaction
}

// Start starts an etcd member and returns once it serves clients.
// Its data survives a restart on the same DataDir.
func Start(ctx context.Context, c Config) (*Server, error) {
	if c.DataDir == "" {
		return nil, errors.New("embedded etcd: a data dir is required")
	}
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.Name, "lockd")
	def(&c.ClientURL, "http://127.0.0.1:2379")
	def(&c.PeerURL, "http://127.0.0.1:2380")
	def(&c.InitialCluster, c.Name+"="+c.PeerURL)
	def(&c.ClusterToken, "lockd")
	def(&c.LogLevel, "error")
	if c.StartTimeout == 0 {
		c.StartTimeout = time.Minute
	}
	curl, err := url.Parse(c.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: client url: %w", err)
	}
	purl, err := url.Parse(c.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: peer url: %w", err)
	}
	cfg := embed.NewConfig()
	cfg.Name = c.Name
	cfg.Dir = c.DataDir
	cfg.ListenClientUrls = []url.URL{*curl}
	cfg.AdvertiseClientUrls = []url.URL{*curl}
	cfg.ListenPeerUrls = []url.URL{*purl}
	cfg.AdvertisePeerUrls = []url.URL{*purl}
	cfg.InitialCluster = c.InitialCluster
	cfg.InitialClusterToken = c.ClusterToken
	cfg.LogLevel = c.LogLevel
	cfg.Logger = "zap"
	// The metrics and pprof listeners are not lockd's business.
	cfg.Metrics = "basic"
	cfg.QuotaBackendBytes = c.QuotaBackendBytes

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	timer := time.NewTimer(c.StartTimeout)
	defer timer.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-timer.C:
		e.Close()
		return nil, fmt.Errorf("embedded etcd: not serving after %v (a cluster waits for a quorum of its members)", c.StartTimeout)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
	emb := &Server{etcd: e, endpoints: []string{curl.Host}}
	if !c.NoCompaction {
		// In process: the revision from the store itself, the compaction
		// through raft like a client's, so every member applies it.
		emb.compactor = startCompactor(
			func(context.Context) (int64, error) { return e.Server.KV().Rev(), nil },
			func(ctx context.Context, rev int64) error {
				_, err := e.Server.Compact(ctx, &etcdserverpb.CompactionRequest{Revision: rev})
				return err
			},
			c.Compact)
	}
	return emb, nil
}

// Compacted returns the revision this member's compactor last compacted
// to: 0 before the first compaction, or with NoCompaction.
func (e *Server) Compacted() int64 {
	if e.compactor == nil {
		return 0
	}
	return e.compactor.Compacted()
}

// Endpoints returns the member's client address(es) as host:port.
func (e *Server) Endpoints() []string { return e.endpoints }

// Err reports a fatal error of the running member.
func (e *Server) Err() <-chan error { return e.etcd.Err() }

// Close stops the member. It does not wait for leases to run out: they are
// on disk and keep running when the member starts again.
func (e *Server) Close() error {
	if e.compactor != nil {
		e.compactor.Close()
	}
	e.etcd.Close()
	return nil
}
