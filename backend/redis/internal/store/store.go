// Package store is what the redis and redlock backends do alike with a
// Redis server: the key layout, reply conversions, the SCAN behind List,
// and, for lockd's start-up, credentials, the access check and the words
// for what failed. It holds no lock logic: that lives in the scripts of
// each backend.
package store

import (
	"context"
	"sort"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// Base is the common part of every Redis key of one lock: the prefix, the
// lock's key in braces (its Redis Cluster hash tag) and a colon; each
// backend adds "lock", "fence" and what else it keeps.
func Base(prefix, key string) string { return prefix + "{" + key + "}:" }

// Ms is d in whole milliseconds, at least 1 (Redis refuses PX 0).
func Ms(d time.Duration) int64 { return max(d.Milliseconds(), 1) }

// Int is a script's integer reply, 0 for anything else (a nil, a false).
func Int(v any) int64 {
	n, _ := v.(int64)
	return n
}

// Str is a script's string reply, "" for anything else.
func Str(v any) string {
	s, _ := v.(string)
	return s
}

// GlobEscape escapes s for a Redis glob (SCAN MATCH, ACL key patterns).
func GlobEscape(s string) string {
	var sb strings.Builder
	for _, r := range s {
		switch r {
		case '*', '?', '[', ']', '\\', '^', '-':
			sb.WriteByte('\\')
		}
		sb.WriteRune(r)
	}
	return sb.String()
}

// Keys SCANs c (every master of a cluster) for the locks under prefix whose
// key starts with keyPrefix and sorts after after, and returns their keys
// sorted, each once. It is O(keys on the server): for operators listing
// locks, not for a hot path.
func Keys(ctx context.Context, c goredis.UniversalClient, prefix, keyPrefix, after string) ([]string, error) {
	head, tail := prefix+"{", "}:lock"
	pattern := GlobEscape(head+keyPrefix) + "*" + GlobEscape(tail)
	var (
		mu    sync.Mutex // ForEachMaster scans a cluster's masters at once
		names []string
	)
	scan := func(ctx context.Context, c goredis.UniversalClient) error {
		it := c.Scan(ctx, 0, pattern, 1000).Iterator()
		for it.Next(ctx) {
			k := strings.TrimSuffix(strings.TrimPrefix(it.Val(), head), tail)
			if strings.HasPrefix(k, keyPrefix) && k > after {
				mu.Lock()
				names = append(names, k)
				mu.Unlock()
			}
		}
		return it.Err()
	}
	var err error
	if cc, ok := c.(*goredis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, m *goredis.Client) error { return scan(ctx, m) })
	} else {
		err = scan(ctx, c)
	}
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	return dedup(names), nil // SCAN may return a key twice
}

func dedup(s []string) []string {
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}
