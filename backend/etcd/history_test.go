package etcd_test

import (
	"sort"
	"testing"
	"time"

	"github.com/lockd/lockd/backend/etcd/embedded"

	etcdb "github.com/lockd/lockd/backend/etcd"
)

func p50(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// BenchmarkHistory runs b.N acquire+release cycles on one key of the
// embedded etcd, one after another, and reports the p50 of the first 500
// cycles beside that of the last 500, and etcd's database size at the end:
// with compaction the cost must not grow with the history. The last 500
// alternate with 500 cycles on a fresh key, whose p50 is reported too: the
// same first 500 cycles of a key, measured under the same load of the
// machine as the last 500 (the literal first 500 ran minutes earlier).
// Run it with a fixed count, e.g. -benchtime=50000x; it runs at least
// 1,000 cycles.
func BenchmarkHistory(b *testing.B) {
	for _, tc := range []struct {
		name string
		cfg  embedded.Config
	}{
		{"compacted", embedded.Config{}},
		{"uncompacted", embedded.Config{NoCompaction: true}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			e := startEmbedded(b, tc.cfg)
			cli := client(b, e.Endpoints())
			be := etcdb.New(cli, etcdb.Options{})
			b.Cleanup(func() { be.Close() })
			ctx := b.Context()
			n := max(b.N, 1000)
			var first, last, fresh []time.Duration
			timed := func(key string, into *[]time.Duration) {
				start := time.Now()
				if err := cycle(ctx, be, key, "bench"); err != nil {
					b.Fatalf("%s: %v", key, err)
				}
				*into = append(*into, time.Since(start))
			}
			b.ResetTimer()
			for i := 0; i < n; i++ {
				switch {
				case i < 500:
					timed("history", &first)
				case i < n-500:
					if err := cycle(ctx, be, "history", "bench"); err != nil {
						b.Fatalf("cycle %d: %v", i, err)
					}
				default:
					timed("history", &last)
					timed("fresh", &fresh)
				}
			}
			b.StopTimer()
			pf, pl, pn := p50(first), p50(last), p50(fresh)
			b.ReportMetric(float64(pf.Microseconds()), "first500-p50-µs")
			b.ReportMetric(float64(pl.Microseconds()), "last500-p50-µs")
			b.ReportMetric(float64(pn.Microseconds()), "fresh500-p50-µs")
			b.ReportMetric(float64(pl)/float64(pf), "last/first")
			b.ReportMetric(float64(pl)/float64(pn), "last/fresh")
			st, err := cli.Status(ctx, e.Endpoints()[0])
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(st.DbSizeInUse), "db-in-use-B")
			b.ReportMetric(float64(st.DbSize), "db-file-B")
		})
	}
}
