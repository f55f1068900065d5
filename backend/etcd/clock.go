package etcd

import (
	"context"
	"encoding/json"
	"sort"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

// etcd has no clock of its own to offer, so replicas measure their clocks
// against each other. Each Backend that was asked for its offset writes a
// heartbeat every Options.ClockHeartbeat under <prefix>clock/<instance>: its
// clock when it sent the write, and for each peer the tightest upper bound it
// has seen on (its clock − the peer's clock). Every heartbeat of a peer P
// that reaches this replica's watch at its time r bounds the difference from
// above: mine − P's ≤ r − (P's send time), since the write was sent before it
// arrived. P's own heartbeat carries the bound the other way round. The two
// together hold the difference within an interval as wide as the round trip
// through etcd; the estimate is its middle.
//
// The reference is the median of all live replicas' clocks (this one
// included), so one replica whose clock is off stands out against the others;
// with only two replicas the median is their midpoint and both see the same
// distance from it.

// heartbeat is the value of a clock key.
type heartbeat struct {
	Sent  int64            `json:"t"`  // unix µs, the writer's clock
	Bound map[string]int64 `json:"ub"` // peer → µs: writer − peer ≤ this
}

// boundSamples is how many recent observations of a peer the bound is the
// minimum of: old enough ones age out, so a clock that moves is followed.
const boundSamples = 8

type peerClock struct {
	samples []int64   // µs: my clock at arrival − the peer's send time
	theirs  int64     // µs: the peer's bound on (peer − me); valid if known
	known   bool      // theirs was published
	seen    time.Time // machine time of the last heartbeat
}

func (p *peerClock) mine() int64 {
	m := p.samples[0]
	for _, s := range p.samples[1:] {
		m = min(m, s)
	}
	return m
}

type clockPeers struct {
	once sync.Once
	id   string

	mu    sync.Mutex
	peers map[string]*peerClock
	err   error // why heartbeats stopped, if they did
}

func (b *Backend) clockKey(id string) string { return b.opts.Prefix + "clock/" + id }

// ClockOffset implements backend.ClockChecker. The first call starts the
// heartbeats; until peers were heard from both ways, the estimate is 0 with
// no peers.
func (b *Backend) ClockOffset(ctx context.Context) (backend.ClockReading, error) {
	cp := &b.clocks
	cp.once.Do(func() {
		cp.id = lease.NewID()[:12]
		cp.peers = map[string]*peerClock{}
		go b.clockLoop()
	})
	if err := b.Ping(ctx); err != nil {
		return backend.ClockReading{}, err
	}
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.err != nil {
		return backend.ClockReading{}, cp.err
	}
	// Where each peer's clock stands from mine (µs), and how surely.
	pos := []float64{0}
	var unc float64
	stale := time.Now().Add(-5 * b.opts.ClockHeartbeat)
	for id, p := range cp.peers {
		if p.seen.Before(stale) {
			delete(cp.peers, id)
			continue
		}
		if !p.known || len(p.samples) == 0 {
			continue
		}
		hi, lo := float64(p.mine()), -float64(p.theirs) // mine − theirs ∈ [lo, hi]
		pos = append(pos, -(lo+hi)/2)
		unc = max(unc, (hi-lo)/2)
	}
	sort.Float64s(pos)
	n := len(pos)
	median := pos[n/2]
	if n%2 == 0 {
		median = (pos[n/2-1] + pos[n/2]) / 2
	}
	return backend.ClockReading{
		Offset:      time.Duration(-median) * time.Microsecond,
		Uncertainty: time.Duration(unc) * time.Microsecond,
		Peers:       n - 1,
		Reference:   "median of the lockd replicas' clocks",
	}, nil
}

// clockLoop writes this replica's heartbeat and follows its peers' until
// the Backend closes.
func (b *Backend) clockLoop() {
	cp := &b.clocks
	fail := func(err error) {
		cp.mu.Lock()
		cp.err = err
		cp.mu.Unlock()
	}
	prefix := b.opts.Prefix + "clock/"
	go func() {
		for b.life.Err() == nil {
			wch := b.cli.Watch(b.life, prefix, clientv3.WithPrefix())
			for resp := range wch {
				now := b.opts.Clock.Now()
				for _, ev := range resp.Events {
					b.heard(strings.TrimPrefix(string(ev.Kv.Key), prefix), ev, now)
				}
			}
			select { // the watch broke: open it again, not in a hot loop
			case <-b.life.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	t := time.NewTicker(b.opts.ClockHeartbeat)
	defer t.Stop()
	for {
		fail(b.beat())
		select {
		case <-b.life.Done():
			return
		case <-t.C:
		}
	}
}

func (b *Backend) beat() error {
	cp := &b.clocks
	wl, err := b.waiterLease(b.life)
	if err != nil {
		return err
	}
	hb := heartbeat{Bound: map[string]int64{}}
	cp.mu.Lock()
	for id, p := range cp.peers {
		if len(p.samples) > 0 {
			hb.Bound[id] = p.mine()
		}
	}
	cp.mu.Unlock()
	hb.Sent = b.opts.Clock.Now().UnixMicro()
	v, _ := json.Marshal(hb) // plain struct: cannot fail
	c, cancel := b.opCtx(b.life)
	defer cancel()
	if _, err := b.cli.Put(c, b.clockKey(cp.id), string(v), clientv3.WithLease(wl)); err != nil {
		return fail(b.life, "clock heartbeat", err)
	}
	return nil
}

// heard records a peer's heartbeat that arrived at now (my clock).
func (b *Backend) heard(id string, ev *clientv3.Event, now time.Time) {
	cp := &b.clocks
	if id == cp.id {
		return
	}
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if ev.Type == clientv3.EventTypeDelete {
		delete(cp.peers, id)
		return
	}
	var hb heartbeat
	if err := json.Unmarshal(ev.Kv.Value, &hb); err != nil {
		return // not ours to judge; it does not count
	}
	p := cp.peers[id]
	if p == nil {
		p = &peerClock{}
		cp.peers[id] = p
	}
	p.samples = append(p.samples, now.UnixMicro()-hb.Sent)
	if len(p.samples) > boundSamples {
		p.samples = p.samples[1:]
	}
	p.theirs, p.known = hb.Bound[cp.id]
	p.seen = time.Now()
}

var _ backend.ClockChecker = (*Backend)(nil)
