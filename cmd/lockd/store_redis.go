package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"

	goredis "github.com/redis/go-redis/v9"

	redisb "github.com/lockd/lockd/backend/redis"
	"github.com/lockd/lockd/backend/redis/redlock"
)

// redisConfig is what --backend redis and --backend redlock are told.
type redisConfig struct {
	addrs  string
	prefix string
}

func (c *redisConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.addrs, "redis-addrs", "", "comma-separated host:port: one Redis (or a Sentinel/cluster seed list) for --backend redis, the independent masters for --backend redlock")
	fs.StringVar(&c.prefix, "redis-prefix", "", "prefix of every Redis key lockd writes (default lockd: for redis, lockd:rl: for redlock)")
}

func openRedis(ctx context.Context, c redisConfig) (*store, error) {
	addrs := splitList(c.addrs)
	if len(addrs) == 0 {
		return nil, errors.New("--backend redis needs --redis-addrs host:port")
	}
	cli := goredis.NewUniversalClient(&goredis.UniversalOptions{Addrs: addrs})
	b, err := redisb.New(ctx, cli, redisb.Options{Prefix: c.prefix})
	if err != nil {
		cli.Close()
		return nil, err
	}
	return &store{b: b, describe: "redis at " + strings.Join(addrs, ",")}, nil
}

func openRedlock(c redisConfig) (*store, error) {
	addrs := splitList(c.addrs)
	if len(addrs) == 0 {
		return nil, errors.New("--backend redlock needs --redis-addrs a,b,c,... (independent masters, an odd number)")
	}
	var masters []goredis.UniversalClient
	for _, a := range addrs {
		masters = append(masters, goredis.NewClient(&goredis.Options{Addr: a, MaxRetries: -1, DialerRetries: 1, ContextTimeoutEnabled: true}))
	}
	b, err := redlock.New(masters, redlock.Options{Prefix: c.prefix})
	if err != nil {
		for _, m := range masters {
			m.Close()
		}
		return nil, err
	}
	return &store{b: b, describe: fmt.Sprintf("redlock over %d masters", len(addrs))}, nil
}
