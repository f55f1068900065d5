package client_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/lockd/lockd/client"
)

// BenchmarkAcquireRelease measures one uncontended acquire + release round
// trip through the client against a real lockd (embedded etcd), loopback.
func BenchmarkAcquireRelease(b *testing.B) {
	c, err := client.New(sharedServer(b).URL, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for b.Loop() {
		g, err := c.AcquireLease(ctx, "bench-acq", client.AcquireOptions{TTL: 10 * time.Second})
		if err != nil {
			b.Fatal(err)
		}
		if err := c.ReleaseLease(ctx, "bench-acq", g.LeaseID); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHandoff measures release → grant to a waiting client, two
// clients alternating on one key: the time from the holder's release call to
// the waiter's acquire returning, reported as handoff-p50-ms/p99-ms (ns/op
// includes a pause that lets the waiter queue, and is not the metric).
func BenchmarkHandoff(b *testing.B) {
	srv := sharedServer(b)
	ctx := context.Background()
	c1, _ := client.New(srv.URL, nil)
	c2, _ := client.New(srv.URL, nil)
	held, err := c1.AcquireLease(ctx, "bench-handoff", client.AcquireOptions{TTL: 10 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	cur, next := c1, c2
	var lat []time.Duration
	for b.Loop() {
		type res struct {
			g   client.Grant
			at  time.Time
			err error
		}
		done := make(chan res, 1)
		go func() {
			g, err := next.AcquireLease(ctx, "bench-handoff", client.AcquireOptions{TTL: 10 * time.Second, Wait: 10 * time.Second})
			done <- res{g, time.Now(), err}
		}()
		time.Sleep(2 * time.Millisecond) // let the waiter queue
		start := time.Now()
		if err := cur.ReleaseLease(ctx, "bench-handoff", held.LeaseID); err != nil {
			b.Fatal(err)
		}
		r := <-done
		if r.err != nil {
			b.Fatal(r.err)
		}
		lat = append(lat, r.at.Sub(start))
		held = r.g
		cur, next = next, cur
	}
	cur.ReleaseLease(ctx, "bench-handoff", held.LeaseID)
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[int(p*float64(len(lat)-1))]) / float64(time.Millisecond)
	}
	b.ReportMetric(pct(0.5), "handoff-p50-ms")
	b.ReportMetric(pct(0.99), "handoff-p99-ms")
}
