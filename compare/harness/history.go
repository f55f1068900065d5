package harness

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"sort"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// The long-history scenario: acquire + release on one key, over and over,
// through lockd's backend in process (history lives in the store; the HTTP
// hop does not change with it). The p50 of the first 500 cycles is compared
// with the p50 of the last 500, and each of the last 500 is alternated with
// a cycle on a fresh key, as backend/etcd's BenchmarkHistory does: a store
// slowed by history in general slows both, one slowed by this key's history
// only the first.

// HistoryResult is the long-history scenario on one backend.
type HistoryResult struct {
	Cycles int `json:"cycles"`
	// Asked is how many cycles were asked for; Budget says why fewer ran.
	Asked   int     `json:"cycles_asked"`
	Budget  string  `json:"budget,omitempty"`
	FirstUs float64 `json:"first500_p50_us"`
	LastUs  float64 `json:"last500_p50_us"`
	FreshUs float64 `json:"fresh500_p50_us"`
	// StoreBefore and StoreAfter describe the store's size, in its own
	// terms, before the first cycle and after the last.
	StoreBefore string  `json:"store_before"`
	StoreAfter  string  `json:"store_after"`
	ElapsedS    float64 `json:"elapsed_s"`
	Unmeasured  string  `json:"unmeasured,omitempty"`
}

const historyWindow = 500

// historySize: how many cycles, and the time the untimed middle may take
// at most (a store slow enough to need more is measured after fewer
// cycles, and the report says how many).
func historySize(quick bool) (int, time.Duration) {
	if quick {
		return 1000, time.Minute
	}
	return 50000, 150 * time.Second
}

func runHistory(ctx context.Context, d *deployment, quick bool, b *bar) *HistoryResult {
	n, budget := historySize(quick)
	return measureHistory(ctx, d, n, budget, b.set)
}

func measureHistory(ctx context.Context, d *deployment, cycles int, budget time.Duration, progress func(float64)) *HistoryResult {
	res := &HistoryResult{Cycles: cycles, Asked: cycles}
	if progress == nil {
		progress = func(float64) {}
	}
	bk, err := d.newBackend(d.Addrs, nil)
	if err != nil {
		res.Unmeasured = "connect lockd to the store: " + err.Error()
		return res
	}
	defer bk.Close()
	l := contractLocker{b: bk}
	res.StoreBefore = d.size()
	key := fmt.Sprintf("history-%d", time.Now().UnixNano())
	cycle := func(k string) (time.Duration, error) {
		start := time.Now()
		g, err := l.Acquire(ctx, k, "history", 10*time.Second, 0)
		if err != nil {
			return 0, err
		}
		if err := l.Release(ctx, g); err != nil {
			return 0, err
		}
		return time.Since(start), nil
	}
	var first, last, fresh []time.Duration
	start := time.Now()
	for i := 0; i < cycles; i++ {
		if i >= historyWindow && i < cycles-historyWindow && time.Since(start) > budget {
			res.Budget = fmt.Sprintf("stopped the untimed middle after %d cycles: the %s budget ran out", i, budget)
			cycles -= (cycles - historyWindow) - i
			res.Cycles = cycles
		}
		if ctx.Err() != nil {
			res.Unmeasured = ctx.Err().Error()
			return res
		}
		el, err := cycle(key)
		if err != nil {
			res.Unmeasured = fmt.Sprintf("cycle %d: %v", i, err)
			return res
		}
		switch {
		case i < historyWindow:
			first = append(first, el)
		case i >= cycles-historyWindow:
			last = append(last, el)
			f, err := cycle(fmt.Sprintf("%s-fresh-%d", key, i))
			if err != nil {
				res.Unmeasured = fmt.Sprintf("fresh cycle %d: %v", i, err)
				return res
			}
			fresh = append(fresh, f)
		}
		if i%100 == 0 {
			progress(float64(i) / float64(cycles))
		}
	}
	res.ElapsedS = time.Since(start).Seconds()
	res.FirstUs, res.LastUs, res.FreshUs = p50us(first), p50us(last), p50us(fresh)
	res.StoreAfter = d.size()
	return res
}

func p50us(ds []time.Duration) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return float64(s[len(s)/2]) / float64(time.Microsecond)
}

// size describes the store's size, in its own terms.
func (d *deployment) size() string {
	if d.storeSize == nil {
		return "not measured: no size probe for this store"
	}
	return d.storeSize()
}

// etcdSize: every member's database file and the part of it in use
// (Maintenance.Status).
func etcdSize(endpoints []string) string {
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return "not measured: " + err.Error()
	}
	defer cli.Close()
	var parts []string
	for i, ep := range endpoints {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		st, err := cli.Status(ctx, ep)
		cancel()
		if err != nil {
			parts = append(parts, fmt.Sprintf("member %d: %v", i, short(err)))
			continue
		}
		parts = append(parts, fmt.Sprintf("member %d: db file %s, in use %s, revision %d", i, fmtBytes(st.DbSize), fmtBytes(st.DbSizeInUse), st.Header.Revision))
	}
	return strings.Join(parts, "; ")
}

// zkSize: the mntr four-letter word's data size and znode count, per server.
func zkSize(addrs []string) string {
	var parts []string
	for i, a := range addrs {
		c, err := net.DialTimeout("tcp", a, 2*time.Second)
		if err != nil {
			parts = append(parts, fmt.Sprintf("server %d: %v", i, err))
			continue
		}
		c.SetDeadline(time.Now().Add(2 * time.Second))
		fmt.Fprint(c, "mntr")
		sc := bufio.NewScanner(c)
		var data, nodes string
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 2 {
				continue
			}
			switch f[0] {
			case "zk_approximate_data_size":
				data = f[1]
			case "zk_znode_count":
				nodes = f[1]
			}
		}
		c.Close()
		if data == "" {
			parts = append(parts, fmt.Sprintf("server %d: mntr gave no data size (is it whitelisted?)", i))
			continue
		}
		parts = append(parts, fmt.Sprintf("server %d: approximate data size %s B, %s znodes", i, data, nodes))
	}
	return strings.Join(parts, "; ")
}

// redisSize: used_memory and the number of keys, per server.
func redisSize(addrs []string) string {
	var parts []string
	for i, a := range addrs {
		c := goredis.NewClient(&goredis.Options{Addr: a})
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		info, err := c.Info(ctx, "memory").Result()
		n, err2 := c.DBSize(ctx).Result()
		cancel()
		c.Close()
		if err != nil || err2 != nil {
			parts = append(parts, fmt.Sprintf("server %d: %v %v", i, err, err2))
			continue
		}
		used := "?"
		for _, line := range strings.Split(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
				used = v
			}
		}
		parts = append(parts, fmt.Sprintf("server %d: used_memory %s B, %d keys", i, used, n))
	}
	return strings.Join(parts, "; ")
}

func fmtBytes(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	default:
		return fmt.Sprintf("%d B", n)
	}
}
