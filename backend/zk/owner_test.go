package zk

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

// The longest owner lockd accepts (lease.MaxOwner characters of 4 bytes
// each: 1024 bytes, about 1,440 bytes of node name once base64-encoded)
// fits in a real ZooKeeper's node names, and a queue of as many such
// waiters as one lockd lets wait on a key (--max-waiters-per-key, 1000)
// still lists in one getChildren (about 1.4 MB, over jute.maxbuffer's 1 MB
// default: that bounds what the server reads, not what it answers).
func TestLongestOwnerFits(t *testing.T) {
	z := sharedZK(t, 1)
	b := newBackend(t, z.Addrs(), Options{})
	key := uniqueKey(t)
	owner := strings.Repeat("😀", lease.MaxOwner)
	if got := len(nodeName(strings.Repeat("s", 32), lease.MaxTTL, time.Now(), owner, "")); got < 1400 {
		t.Fatalf("node name of the longest owner is %d bytes; the test means the longest", got)
	}
	g, err := b.Acquire(ctxFor(t, 30*time.Second), backend.AcquireRequest{Key: key, Owner: owner, TTL: time.Minute})
	if err != nil {
		t.Fatalf("acquire with a %d-byte owner: %v", len(owner), err)
	}

	const waiters = 1000
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make(chan error, waiters)
	for range waiters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := b.Acquire(ctx, backend.AcquireRequest{Key: key, Owner: owner, TTL: time.Minute, Wait: 5 * time.Minute})
			if ctx.Err() == nil {
				errs <- err
			}
		}()
	}
	defer func() { cancel(); wg.Wait() }()

	deadline := time.Now().Add(3 * time.Minute)
	var st backend.LockState
	for {
		st, err = b.Inspect(ctxFor(t, 30*time.Second), key)
		if err != nil {
			t.Fatalf("inspect with %d waiters of the longest owner: %v", st.Waiters, err)
		}
		if st.Waiters == waiters || time.Now().After(deadline) {
			break
		}
		select {
		case err := <-errs:
			t.Fatalf("a waiter with the longest owner ended early: %v", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	if st.Holder == nil || st.Holder.Owner != owner || st.Holder.Token != g.Token || st.Waiters != waiters {
		t.Fatalf("inspect = holder %v (want token %d, the longest owner), %d waiters (want %d)",
			st.Holder != nil && st.Holder.Owner == owner, g.Token, st.Waiters, waiters)
	}
	locks, err := b.List(ctxFor(t, 30*time.Second), key, "", 10)
	if err != nil || len(locks) != 1 || locks[0].Holder == nil || locks[0].Holder.Owner != owner {
		t.Fatalf("list = %d locks, %v; want the one with the longest owner", len(locks), err)
	}
}
