package main

import (
	"flag"

	redisb "github.com/lockd/lockd/backend/redis"
)

// redisFlags are the --redis-* flags, read into the Config that both
// --backend redis and --backend redlock take. The credentials apply to
// every address (every Redlock master).
type redisFlags struct {
	addrs string
	c     redisb.Config
}

func (f *redisFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.addrs, "redis-addrs", "", "comma-separated host:port: one Redis (or a Sentinel/cluster seed list) for --backend redis, the independent masters for --backend redlock")
	fs.StringVar(&f.c.Prefix, "redis-prefix", "", "prefix of every Redis key lockd writes (default lockd: for redis, lockd:rl: for redlock)")
	fs.StringVar(&f.c.User, "redis-user", "", "Redis ACL user lockd authenticates as (empty: the default user); needs --redis-password-file")
	fs.StringVar(&f.c.PasswordFile, "redis-password-file", "", "file holding the Redis password (requirepass, or the ACL user's); never pass a password itself")
	fs.BoolVar(&f.c.TLS, "redis-tls", false, "talk TLS to Redis (the server's tls-port)")
	fs.StringVar(&f.c.CA, "redis-ca", "", "with --redis-tls: CA certificate (PEM) that signed the Redis servers' certificates (default: the system's roots)")
	fs.StringVar(&f.c.Cert, "redis-cert", "", "with --redis-tls: client certificate (PEM) for servers with tls-auth-clients yes")
	fs.StringVar(&f.c.Key, "redis-key", "", "with --redis-tls: the client certificate's private key (PEM)")
}
