package main

import (
	"flag"
	"time"

	zkb "github.com/lockd/lockd/backend/zk"
)

// zkFlags are the --zk-* flags, read into zkb.Config.
type zkFlags struct {
	servers string
	c       zkb.Config
}

func (f *zkFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.servers, "zk-servers", "", "comma-separated host:port of the ZooKeeper ensemble (--backend zk)")
	fs.StringVar(&f.c.Root, "zk-root", "/lockd", "znode under which lock nodes live (--backend zk)")
	fs.DurationVar(&f.c.SessionTimeout, "zk-session-timeout", 10*time.Second, "ZooKeeper session timeout (--backend zk)")
	fs.DurationVar(&f.c.ConnectTimeout, "zk-connect-timeout", 10*time.Second, "how long lockd tries to get a ZooKeeper session at start before it gives up and says why (--backend zk)")
	fs.StringVar(&f.c.User, "zk-user", "", "ZooKeeper digest user; every znode lockd creates is then readable and writable by this user alone (needs --zk-password-file). Without it znodes are world-writable")
	fs.StringVar(&f.c.PasswordFile, "zk-password-file", "", "file holding the --zk-user password (one line; a trailing newline is ignored)")
	fs.BoolVar(&f.c.TLS, "zk-tls", false, "talk TLS to ZooKeeper: --zk-servers are then the servers' secureClientPort")
	fs.StringVar(&f.c.TLSCA, "zk-tls-ca", "", "with --zk-tls: CA certificate (PEM) that signed the ZooKeeper servers' certificates (default: the system's roots)")
	fs.StringVar(&f.c.TLSCert, "zk-tls-cert", "", "with --zk-tls: client certificate (PEM) for servers with ssl.clientAuth=need")
	fs.StringVar(&f.c.TLSKey, "zk-tls-key", "", "with --zk-tls: the client certificate's private key (PEM)")
}
