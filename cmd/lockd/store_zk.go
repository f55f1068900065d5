package main

import (
	"context"
	"errors"
	"flag"
	"strings"
	"time"

	"github.com/lockd/lockd/backend"
	zkb "github.com/lockd/lockd/backend/zk"
)

// zkConfig is what --backend zk is told.
type zkConfig struct {
	servers string
	root    string
	session time.Duration
}

func (c *zkConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.servers, "zk-servers", "", "comma-separated host:port of the ZooKeeper ensemble (--backend zk)")
	fs.StringVar(&c.root, "zk-root", "/lockd", "znode under which lock nodes live (--backend zk)")
	fs.DurationVar(&c.session, "zk-session-timeout", 10*time.Second, "ZooKeeper session timeout (--backend zk)")
}

func openZK(ctx context.Context, c zkConfig, hooks backend.Hooks) (*store, error) {
	servers := splitList(c.servers)
	if len(servers) == 0 {
		return nil, errors.New("--backend zk needs --zk-servers host:port,...")
	}
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	conn, err := zkb.Dial(dctx, servers, c.session)
	cancel()
	if err != nil {
		return nil, err
	}
	return &store{
		b:        zkb.New(conn, zkb.Options{Root: c.root, Hooks: hooks}),
		describe: "zk at " + strings.Join(servers, ",") + " under " + c.root,
	}, nil
}
