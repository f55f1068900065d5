package etcd

// One etcd watch per queue per Backend, shared by this Backend's waiters.
//
// A waiter waits for a change of one entry (the one ahead of it). Each
// waiter opening its own etcd watch costs a watcher in etcd and a stream's
// buffers in the client and the server for every waiter: with thousands of
// waiters on one key, most of a lockd's memory. Instead the first waiter of
// a queue opens one watch on the queue's whole range, and every waiter of
// that queue registers the one key it waits on; each event wakes only the
// waiters of its key. Each waiter still keeps its own entry in the queue,
// so the order holds across replicas. The watch closes with its last
// waiter.
//
// The watch tells what it has delivered: the revision it was created at
// (floor) and, per key, that of the last event (a bounded map: emptied, it
// raises floor to the last event's revision). A waiter that read the queue
// at readRev and registers when its key's last event, or floor, is past
// readRev may have missed a change between the two, so it reads its key
// once (stale); otherwise every later change reaches it.

import (
	"context"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockd/lockd/backend"
)

type watchHub struct {
	cli  *clientv3.Client
	life context.Context

	mu sync.Mutex
	qs map[string]*queueWatch
}

type queueWatch struct {
	subs     map[string]map[chan struct{}]struct{} // key → its waiters' wake-ups
	n        int                                   // waiters registered
	progress int64                                 // see the file comment
	last     map[string]int64                      // key → revision of its last event seen
	floor    int64                                 // last was emptied at this progress
	created  chan struct{}                         // closed once the watch started, or ended
	ended    bool                                  // the watch ended (err says why)
	err      error
	cancel   context.CancelFunc
}

func newWatchHub(cli *clientv3.Client, life context.Context) *watchHub {
	return &watchHub{cli: cli, life: life, qs: map[string]*queueWatch{}}
}

// subscribe registers a wake-up on changes of key, an entry of queue q,
// for a waiter that read the queue at readRev. stale says the waiter must
// check key itself (see the file comment). done unregisters it.
func (h *watchHub) subscribe(ctx context.Context, q, key string, readRev int64) (w *queueWatch, wake chan struct{}, stale bool, done func(), err error) {
	wake = make(chan struct{}, 1)
	h.mu.Lock()
	w = h.qs[q]
	if w == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(h.life))
		w = &queueWatch{subs: map[string]map[chan struct{}]struct{}{}, last: map[string]int64{}, created: make(chan struct{}), cancel: cancel}
		h.qs[q] = w
		go h.run(wctx, q, w)
	}
	if w.subs[key] == nil {
		w.subs[key] = map[chan struct{}]struct{}{}
	}
	w.subs[key][wake] = struct{}{}
	w.n++
	h.mu.Unlock()
	done = func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		if _, ok := w.subs[key][wake]; !ok {
			return
		}
		delete(w.subs[key], wake)
		if len(w.subs[key]) == 0 {
			delete(w.subs, key)
		}
		if w.n--; w.n == 0 && !w.ended {
			w.ended = true
			w.cancel()
			if h.qs[q] == w {
				delete(h.qs, q)
			}
		}
	}
	select {
	case <-w.created:
	case <-ctx.Done():
		done()
		return nil, nil, false, nil, ctx.Err()
	}
	h.mu.Lock()
	stale = w.ended || max(w.floor, w.last[key]) > readRev
	h.mu.Unlock()
	return w, wake, stale, done, nil
}

// run follows the watch of queue q until it ends, waking the waiters of
// each changed key; when it ends it wakes them all (they look again, and a
// new watch opens for the next).
func (h *watchHub) run(ctx context.Context, q string, w *queueWatch) {
	wch := h.cli.Watch(ctx, q, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	var err error
	for resp := range wch {
		if err = resp.Err(); err != nil {
			break
		}
		h.mu.Lock()
		if resp.Created {
			w.progress, w.floor = resp.Header.Revision, resp.Header.Revision
			close(w.created)
		}
		for _, ev := range resp.Events {
			for ch := range w.subs[string(ev.Kv.Key)] {
				select {
				case ch <- struct{}{}:
				default:
				}
			}
			w.progress = max(w.progress, ev.Kv.ModRevision)
			if len(w.last) >= 1<<16 {
				w.last, w.floor = map[string]int64{}, w.progress
			}
			w.last[string(ev.Kv.Key)] = ev.Kv.ModRevision
		}
		h.mu.Unlock()
	}
	if err == nil {
		err = ctx.Err()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.qs[q] == w {
		delete(h.qs, q)
	}
	w.ended, w.err = true, err
	select {
	case <-w.created:
	default:
		close(w.created)
	}
	for _, subs := range w.subs {
		for ch := range subs {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
}

// why is the error a waiter woken by w's end returns: nil when it should
// just look again (the watch was compacted, or its last waiter left).
func (h *watchHub) why(ctx context.Context, w *queueWatch) error {
	h.mu.Lock()
	ended, err := w.ended, w.err
	h.mu.Unlock()
	if !ended || err == nil || compacted(err) {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if h.life.Err() != nil {
		return fmt.Errorf("%w: etcd backend closed", backend.ErrUnavailable)
	}
	return fmt.Errorf("%w: etcd watch: %v", backend.ErrUnavailable, err)
}

// awaitWake returns when w wakes the waiter (with w's error if it ended
// with one), at expiry (if set), at giveUp, or with ctx's error.
func (h *watchHub) awaitWake(ctx context.Context, w *queueWatch, wake chan struct{}, expiry, giveUp time.Time) error {
	at := giveUp
	if !expiry.IsZero() && expiry.Before(at) {
		at = expiry
	}
	timer := time.NewTimer(time.Until(at))
	defer timer.Stop()
	select {
	case <-wake:
		return h.why(ctx, w)
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-h.life.Done():
		return fmt.Errorf("%w: etcd backend closed", backend.ErrUnavailable)
	}
}
