package main

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/lockd/lockd/backend"
	etcdb "github.com/lockd/lockd/backend/etcd"
)

// etcdConfig is what --backend etcd is told.
type etcdConfig struct {
	dataDir        string
	endpoints      string
	prefix         string
	embedClientURL string
	embedPeerURL   string
}

func (c *etcdConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.dataDir, "data-dir", "./lockd-data", "embedded etcd's data directory (etcd without --etcd-endpoints)")
	fs.StringVar(&c.endpoints, "etcd-endpoints", "", "comma-separated host:port of an etcd cluster to use instead of the embedded one")
	fs.StringVar(&c.prefix, "etcd-prefix", "/lockd/", "prefix of every key lockd writes in etcd")
	fs.StringVar(&c.embedClientURL, "embed-etcd-client-url", "http://127.0.0.1:2379", "where the embedded etcd serves clients; a second lockd replica can use it as --etcd-endpoints")
	fs.StringVar(&c.embedPeerURL, "embed-etcd-peer-url", "http://127.0.0.1:2380", "the embedded etcd's peer URL")
}

// openEtcd connects to the configured etcd cluster, or starts the embedded
// one when no endpoints are given.
func openEtcd(ctx context.Context, c etcdConfig, logLevel string, hooks backend.Hooks) (*store, error) {
	st := &store{}
	endpoints := splitList(c.endpoints)
	if len(endpoints) == 0 {
		// etcd logs its own closed listeners as errors at every stop;
		// its log is shown only when lockd's is at debug.
		etcdLog := "fatal"
		if logLevel == "debug" {
			etcdLog = "warn"
		}
		emb, err := etcdb.StartEmbedded(ctx, etcdb.EmbedConfig{DataDir: c.dataDir, ClientURL: c.embedClientURL, PeerURL: c.embedPeerURL, LogLevel: etcdLog})
		if err != nil {
			return nil, err
		}
		st.closers = append(st.closers, func() { emb.Close() })
		endpoints = emb.Endpoints()
		abs, _ := filepath.Abs(c.dataDir)
		st.describe = fmt.Sprintf("etcd, embedded, data in %s, etcd clients on %s", abs, c.embedClientURL)
	} else {
		st.describe = "etcd at " + strings.Join(endpoints, ",")
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop(), Context: ctx})
	if err != nil {
		st.close()
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	st.closers = append(st.closers, func() { cli.Close() })
	st.b = etcdb.New(cli, etcdb.Options{Prefix: c.prefix, Hooks: hooks})
	return st, nil
}
