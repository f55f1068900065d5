package main

import (
	"flag"
	"fmt"

	"github.com/lockd/lockd/backend/etcd/embedded"

	etcdb "github.com/lockd/lockd/backend/etcd"
)

// etcdFlags are the etcd flags, read into etcdb.Config.
type etcdFlags struct {
	endpoints string
	c         etcdb.Config
}

func (f *etcdFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.c.DataDir, "data-dir", "./lockd-data", "embedded etcd's data directory (etcd without --etcd-endpoints)")
	fs.StringVar(&f.endpoints, "etcd-endpoints", "", "comma-separated host:port or https://host:port of an etcd cluster to use instead of the embedded one")
	fs.StringVar(&f.c.Prefix, "etcd-prefix", "/lockd/", "prefix of every key lockd writes in etcd")
	fs.StringVar(&f.c.EmbedClientURL, "embed-etcd-client-url", "http://127.0.0.1:2379", "where the embedded etcd serves clients, without TLS or authentication: keep it on loopback; a second lockd replica on this host can use it as --etcd-endpoints")
	fs.StringVar(&f.c.EmbedPeerURL, "embed-etcd-peer-url", "http://127.0.0.1:2380", "the embedded etcd's peer URL")
	fs.StringVar(&f.c.CA, "etcd-ca", "", "CA certificate (PEM) to trust for https:// --etcd-endpoints instead of the system's roots")
	fs.StringVar(&f.c.Cert, "etcd-cert", "", "client certificate (PEM) for etcd's --client-cert-auth; with etcd authentication on and no --etcd-user, its CN is the etcd user")
	fs.StringVar(&f.c.Key, "etcd-key", "", "the client certificate's private key (PEM)")
	fs.StringVar(&f.c.User, "etcd-user", "", "etcd user (RBAC) lockd logs in as; needs readwrite on the --etcd-prefix range")
	fs.StringVar(&f.c.PasswordFile, "etcd-password-file", "", "file holding --etcd-user's password (one trailing newline is ignored)")
	fs.DurationVar(&f.c.CompactEvery, "etcd-compact-every", 0, fmt.Sprintf("look this often (e.g. 1s) and compact the external etcd's history to its last %d revisions once as many more were written; compaction is cluster-wide, for every key. 0: lockd does not compact, and the cluster must (etcd --auto-compaction-mode=revision). The embedded etcd always compacts", embedded.DefaultCompactRetain))
}
