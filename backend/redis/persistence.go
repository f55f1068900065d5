package redis

import (
	"context"
	"fmt"
	"strings"

	goredis "github.com/redis/go-redis/v9"
)

// AppendOnly reports whether the server keeps an append-only file (INFO
// persistence, aof_enabled): without one a restart loses every grant and
// every fencing counter, so a lock can be granted twice and tokens go back.
// (Whether it fsyncs every write, as safety needs, only CONFIG GET
// appendfsync tells, which lockd's least-privilege user may not run.) An
// error when INFO is refused or the reply has no aof_enabled line.
func AppendOnly(ctx context.Context, c goredis.UniversalClient) (bool, error) {
	info, err := c.Info(ctx, "persistence").Result()
	if err != nil {
		return false, err
	}
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "aof_enabled:"); ok {
			return v == "1", nil
		}
	}
	return false, fmt.Errorf("redis INFO persistence has no aof_enabled line")
}
