package redis

import (
	"fmt"
	"strconv"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/backend/redis/internal/store"
)

// Idempotent acquires.
//
// An acquire with an idempotency key keeps a record, the hash
// <Prefix>{<key>}:i:<idempotency key> = {f: fingerprint, l: lease id, w:
// waiter id}, written by acquire.lua in the same script run that queues or
// grants it, and kept for the acquire's TTL or wait plus
// backend.IdempotencyWindow. A retry's script run finds it: the lease
// holds the lock, and the retry gets that grant; the waiter still beats in
// the queue, and the retry waits under the same waiter and lease ids, in the
// same place; neither, and the grant ended. The attempt that created the
// record owns the queue entry: only its give-up removes it (and the record,
// unless the lease was granted). A retry that attached never removes
// anything.

var _ backend.Idempotent = (*Backend)(nil)

// IdempotentAcquire implements backend.Idempotent.
func (b *Backend) IdempotentAcquire() {}

// idemKeys is the acquire and abandon scripts' KEYS: the lock's keys, then
// the idempotency record (a name nobody writes when req has no key).
func (b *Backend) idemKeys(req backend.AcquireRequest) []string {
	return append(b.keys(req.Key), b.prefix+"{"+req.Key+"}:i:"+req.Idempotency.Key)
}

type idemArg struct {
	on          bool
	fingerprint string // '' without a key
	keepMS      string
}

func idemArgs(req backend.AcquireRequest) idemArg {
	if req.Idempotency.Key == "" {
		return idemArg{keepMS: "0"}
	}
	keep := max(req.TTL, req.Wait) + backend.IdempotencyWindow
	// A fingerprint is never empty in the script: '' means "no key".
	return idemArg{on: true, fingerprint: "f:" + req.Idempotency.Fingerprint, keepMS: strconv.FormatInt(keep.Milliseconds(), 10)}
}

// replayed handles the acquire script's answer to a retry whose key is
// recorded under another lease (res[0] < 0). It returns the lease and waiter
// ids to go on waiting with, or ok false and the error to return.
func (b *Backend) replayed(req backend.AcquireRequest, res []any, waiter string, wake chan struct{}) (id, newWaiter string, ok bool, err error) {
	switch store.Int(res[0]) {
	case -1:
		return "", "", false, fmt.Errorf("redis acquire %q: the grant of this idempotency key ended: %w", req.Key, backend.ErrLeaseExpired)
	case -2:
		return "", "", false, fmt.Errorf("redis acquire %q: %w", req.Key, backend.ErrIdempotencyKeyReused)
	}
	id, newWaiter = store.Str(res[1]), store.Str(res[2])
	if wake != nil {
		// Wake-ups for the first attempt's waiter id reach this mailbox too.
		b.mu.Lock()
		delete(b.waiters, waiter)
		b.waiters[newWaiter] = wake
		b.mu.Unlock()
	}
	return id, newWaiter, true, nil
}
