package redis

// Heartbeats: one per (queue, replica), not one per waiter.
//
// A queued waiter keeps its place while its heartbeat deadline in the
// queue's zset (qt) is ahead of Redis's clock. Each Backend keeps a registry
// of its own waiters by queue; one goroutine per queue with local waiters
// runs a beat script every HeartbeatTimeout/3 that moves on the deadlines
// of all of them in one call, drops dead waiters at the head, and answers
// which local waiters to wake: those at the head that may be granted now (a
// wake-up lost to a pub/sub reconnect, or a dead head just dropped), and
// those no longer queued (a Redis that restarted empty), whose acquire then
// queues them again. The waiters themselves re-run their acquire only when
// woken, at a holder's deadline, a lock-delay's or their session's end, or
// when they give up. So Redis runs O(queues × replicas) scripts per period,
// whatever the number of waiters.

import (
	"context"
	_ "embed"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/lockd/lockd/backend/redis/internal/store"
)

var (
	//go:embed scripts/beat.lua
	beatLua string
	//go:embed scripts/sem_beat.lua
	semBeatLua string
	//go:embed scripts/rw_beat.lua
	rwBeatLua string

	beatScript    = goredis.NewScript(prelude + beatLua)
	semBeatScript = goredis.NewScript(prelude + semPrelude + semBeatLua)
	rwBeatScript  = goredis.NewScript(prelude + rwPrelude + rwBeatLua)
)

// beatGroup is one queue's local waiters: entry -> their mailboxes (two
// attempts with one idempotency key may wait as one entry).
type beatGroup struct {
	script  *goredis.Script
	keys    []string // the queue's keys; keys[3] is its zset, naming the group
	members map[string]map[chan struct{}]bool
}

// joinBeat registers entry (a waiter's queue entry, whose mailbox is wake)
// with the heartbeat of the queue of keys, starting it if it is the
// queue's first local waiter. The returned func unregisters it. Call it once
// the entry is queued: the beat never queues anyone.
func (b *Backend) joinBeat(script *goredis.Script, keys []string, entry string, wake chan struct{}) (leave func()) {
	name := keys[3]
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return func() {}
	}
	g := b.groups[name]
	if g == nil {
		g = &beatGroup{script: script, keys: keys, members: map[string]map[chan struct{}]bool{}}
		b.groups[name] = g
		b.beaters.Add(1)
		go b.beatLoop(name, g)
	}
	if g.members[entry] == nil {
		g.members[entry] = map[chan struct{}]bool{}
	}
	g.members[entry][wake] = true
	return func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if m := g.members[entry]; m != nil {
			delete(m, wake)
			if len(m) == 0 {
				delete(g.members, entry)
			}
		}
	}
}

// beatLoop beats for group g until it has no member left at a tick, or the
// Backend closes.
func (b *Backend) beatLoop(name string, g *beatGroup) {
	defer b.beaters.Done()
	every := max(b.beat/3, time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	timeout := store.Ms(b.beat)
	for {
		select {
		case <-b.life.Done():
			return
		case <-t.C:
		}
		b.mu.Lock()
		if len(g.members) == 0 {
			delete(b.groups, name)
			b.mu.Unlock()
			return
		}
		args := make([]any, 0, 2+len(g.members))
		args = append(args, timeout, b.channel)
		for e := range g.members {
			args = append(args, e)
		}
		b.mu.Unlock()

		// As long as a place lasts: a beat late under load still keeps it.
		c, cancel := context.WithTimeout(b.life, b.beat)
		wakes, err := g.script.Run(c, b.client, g.keys, args...).StringSlice()
		cancel()
		if err != nil {
			// Redis slow or out of reach. Waking every waiter here would
			// send a herd of acquires at a Redis that is already behind;
			// they notice at their own next run, and if their places lapse
			// meanwhile the next beat that gets through tells them to queue
			// again.
			continue
		}
		b.mu.Lock()
		for _, e := range wakes {
			wakeAll(g.members[e])
		}
		b.mu.Unlock()
	}
}

func wakeAll(m map[chan struct{}]bool) {
	for ch := range m {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
