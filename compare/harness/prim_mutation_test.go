package harness

import (
	"context"
	"sync"
	"time"

	"github.com/lockd/lockd/backend"
)

// The primitives' mutations for TestEveryCheckIsShownToFail: the real
// backend's semaphores or read-write locks wrapped in broken ones; its
// locks and elections stay intact.

// brokenPrims is b with sm and rw in place of its own semaphores and
// read-write locks.
type brokenPrims struct {
	backend.Backend
	el backend.Elections
	sm backend.Semaphores
	rw backend.RWLocks
}

func (b brokenPrims) Elections() backend.Elections   { return b.el }
func (b brokenPrims) Semaphores() backend.Semaphores { return b.sm }
func (b brokenPrims) RWLocks() backend.RWLocks       { return b.rw }

// breakPrims breaks b's semaphores with sm and its read-write locks with
// rw (nil: left as they are).
func breakPrims(b backend.Backend, sm func(backend.Semaphores) backend.Semaphores, rw func(backend.RWLocks) backend.RWLocks) backend.Backend {
	bp := brokenPrims{Backend: b, el: b.(backend.Elector).Elections(), sm: b.(backend.Semaphorer).Semaphores(), rw: b.(backend.RWLocker).RWLocks()}
	if sm != nil {
		bp.sm = sm(bp.sm)
	}
	if rw != nil {
		bp.rw = rw(bp.rw)
	}
	return bp
}

// grantsPermitTwice grants a permit beyond the semaphore's size: while all
// N are out, an acquire waits on a twin semaphore of the same store
// instead, so its token and slot are real ones, and N+1 holders are
// inside.
type grantsPermitTwice struct {
	backend.Semaphores
	mu    sync.Mutex
	out   map[string]int
	twins map[string]bool // lease id → granted on the twin
}

func newGrantsPermitTwice(s backend.Semaphores) backend.Semaphores {
	return &grantsPermitTwice{Semaphores: s, out: map[string]int{}, twins: map[string]bool{}}
}

func (m *grantsPermitTwice) Acquire(ctx context.Context, req backend.SemaphoreRequest) (backend.Permit, error) {
	m.mu.Lock()
	full := m.out[req.Key] >= req.Permits
	m.mu.Unlock()
	real := req
	if full {
		real.Key = req.Key + "-twin"
	}
	p, err := m.Semaphores.Acquire(ctx, real)
	if err != nil {
		return p, err
	}
	m.mu.Lock()
	m.out[req.Key]++
	m.twins[p.LeaseID] = full
	m.mu.Unlock()
	p.Key = req.Key
	return p, nil
}

func (m *grantsPermitTwice) storeKey(key, id string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.twins[id] {
		return key + "-twin"
	}
	return key
}

func (m *grantsPermitTwice) Renew(ctx context.Context, key, id string, ttl time.Duration) (backend.Permit, error) {
	p, err := m.Semaphores.Renew(ctx, m.storeKey(key, id), id, ttl)
	p.Key = key
	return p, err
}

func (m *grantsPermitTwice) Release(ctx context.Context, key, id string) error {
	err := m.Semaphores.Release(ctx, m.storeKey(key, id), id)
	m.mu.Lock()
	m.out[key]--
	delete(m.twins, id)
	m.mu.Unlock()
	return err
}

// lowerPermitToken hands every other permit the first token it ever
// handed out (every fifth, as lowerToken does for locks, left one lowered
// permit in a loaded run's six, and it went unseen in three runs).
type lowerPermitToken struct {
	backend.Semaphores
	mu    sync.Mutex
	n     int
	first uint64
}

func (m *lowerPermitToken) Acquire(ctx context.Context, req backend.SemaphoreRequest) (backend.Permit, error) {
	p, err := m.Semaphores.Acquire(ctx, req)
	if err != nil {
		return p, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.n++
	switch {
	case m.first == 0:
		m.first = p.Token
	case m.n%2 == 0:
		p.Token = m.first
	}
	return p, nil
}

// reusesSlot tells each permit the slot of another live permit when there
// is one: two holders fence on one slot.
type reusesSlot struct {
	backend.Semaphores
	mu   sync.Mutex
	live map[string]int // lease id → the slot it was told
}

func newReusesSlot(s backend.Semaphores) backend.Semaphores {
	return &reusesSlot{Semaphores: s, live: map[string]int{}}
}

func (m *reusesSlot) Acquire(ctx context.Context, req backend.SemaphoreRequest) (backend.Permit, error) {
	p, err := m.Semaphores.Acquire(ctx, req)
	if err != nil {
		return p, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.live {
		p.Slot = s
		break
	}
	m.live[p.LeaseID] = p.Slot
	return p, nil
}

func (m *reusesSlot) Release(ctx context.Context, key, id string) error {
	m.mu.Lock()
	delete(m.live, id)
	m.mu.Unlock()
	return m.Semaphores.Release(ctx, key, id)
}

// sharesWrites takes every write lock in read mode and calls it a write:
// writers share the lock with readers and with each other.
type sharesWrites struct{ backend.RWLocks }

func (m sharesWrites) Acquire(ctx context.Context, req backend.RWAcquireRequest) (backend.RWGrant, error) {
	mode := req.Mode
	req.Mode = backend.ModeRead
	g, err := m.RWLocks.Acquire(ctx, req)
	g.Mode = mode
	return g, err
}
