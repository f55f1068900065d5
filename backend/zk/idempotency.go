package zk

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/lockd/lockd/backend"
)

// Idempotent acquires.
//
//	<Root>/_idem/<shard>/<hash>   persistent, one per idempotency key
//
// An acquire with an idempotency key creates its record in the same multi-op
// as its queue node, so the record exists exactly when the node was made.
// The record holds the request's fingerprint, the lease's secret sealed with
// a pad only the idempotency key gives (so reading ZooKeeper still does not
// reveal the capability), and the time after which it may go. A retry's
// multi-op fails on the existing record; the retry reads it, unseals the
// secret and finds the queue node by its protected prefix, as a lost create
// reply is recovered: the node is the state while it lives. Held, the retry
// returns that grant unchanged; queued, it waits in the node's place and
// takes the grant when it comes; gone (released, expired), the record is the
// tombstone and the retry gets ErrLeaseExpired.
//
// The acquire that made the node owns it: its give-up deletes the node and
// the record in one multi-op, and only while the node still waits (a grant a
// retry returned is never undone). A retry never removes the node.
//
// Records live outside the key's container so that they never keep
// ZooKeeper from reaping it. They are spread over idemShards container
// nodes (each getChildren must fit jute.maxbuffer, 1 MB: about 25,000
// records a shard, 6.4 million in all). A keyed acquire that creates a record
// sweeps that record's shard in the background when this replica has not
// swept it for sweepEvery: it reads every record of the shard (one
// getChildren, one getData each, 16 at a time) and deletes those whose keep
// time has passed. So while keyed acquires go on, a record is gone at most
// sweepEvery after its keep time (backend.IdempotencyWindow after the end of
// its lease or wait, whichever is later), and each replica reads it about
// IdempotencyWindow/sweepEvery = 12 times over its life; records left when
// keyed acquires stop stay until the next keyed acquire lands in their
// shard.

var _ backend.Idempotent = (*Backend)(nil)

// IdempotentAcquire implements backend.Idempotent.
func (b *Backend) IdempotentAcquire() {}

const (
	idemDir        = "/_idem"
	idemShards     = 256
	idemSweepEvery = 5 * time.Minute
)

// idemRecord is a record's data.
type idemRecord struct {
	Fingerprint string `json:"f"`
	// Sealed is the lease's secret XOR a pad derived from the idempotency
	// key, in hex.
	Sealed string `json:"s"`
	// Keep is when the record may go (Unix ms, by the writer's clock).
	Keep int64 `json:"k"`
}

func idemSum(domain, key string) [32]byte {
	return sha256.Sum256([]byte("lockd/zk/" + domain + "/" + key))
}

// idemPath is where the record of an idempotency key lives.
func (b *Backend) idemPath(key string) string {
	h := idemSum("idem", key)
	return fmt.Sprintf("%s%s/%02x/%s", b.root, idemDir, int(h[0])%b.idem.shards, hex.EncodeToString(h[:16]))
}

// seal hides secret (at most 32 bytes) behind a pad only key gives; it is
// its own inverse on the raw bytes.
func seal(key string, secret []byte) []byte {
	pad := idemSum("seal", key)
	out := make([]byte, len(secret))
	for i := range out {
		out[i] = secret[i] ^ pad[i%len(pad)]
	}
	return out
}

// newRecord is the data of req's record for secret.
func (b *Backend) newRecord(req backend.AcquireRequest, secret string) []byte {
	keep := b.clock.Now().Add(max(req.TTL, req.Wait) + b.idem.keep)
	raw, _ := json.Marshal(idemRecord{
		Fingerprint: req.Idempotency.Fingerprint,
		Sealed:      hex.EncodeToString(seal(req.Idempotency.Key, []byte(secret))),
		Keep:        keep.UnixMilli(),
	})
	return raw
}

// errRecorded: the acquire's record exists already (made by an earlier
// attempt, or by this one whose reply was lost).
var errRecorded = errors.New("idempotency key recorded")

// recorded handles an acquire whose record exists: it returns the secret
// of the recorded acquire and its node's name, or an error for the caller
// (ErrIdempotencyKeyReused, ErrLeaseExpired). found is false when the record
// went meanwhile (its acquire was refused): the acquire runs afresh.
func (a *acquirer) recorded(ctx context.Context) (found bool, err error) {
	shard := a.rec[:strings.LastIndexByte(a.rec, '/')]
	// Sync: the member we read from may lag the leader that refused our
	// create.
	if _, err := call(ctx, func() (string, error) { return a.b.conn.Sync(shard) }); err != nil && !errors.Is(err, zk.ErrNoNode) {
		return false, err
	}
	raw, err := call(ctx, func() ([]byte, error) {
		raw, _, err := a.b.conn.Get(a.rec)
		return raw, err
	})
	if errors.Is(err, zk.ErrNoNode) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var rec idemRecord
	sealed, herr := []byte(nil), json.Unmarshal(raw, &rec)
	if herr == nil {
		sealed, herr = hex.DecodeString(rec.Sealed)
	}
	if herr != nil {
		return false, fmt.Errorf("zk: corrupt idempotency record %s: %w", a.rec, herr)
	}
	if rec.Fingerprint != a.req.Idempotency.Fingerprint {
		return true, fmt.Errorf("zk acquire %q: %w", a.req.Key, backend.ErrIdempotencyKeyReused)
	}
	secret := string(seal(a.req.Idempotency.Key, sealed))
	name, err := a.b.findNode(ctx, a.kp, protected(secret))
	if err != nil {
		return false, err
	}
	if name == "" {
		return true, a.ended()
	}
	c, ok := parseChild(name)
	if !ok {
		return true, a.ended()
	}
	if secret != a.secret {
		// Another attempt's: wait in its place, at most until its own wait
		// ends (after that, others may remove the node as abandoned).
		a.replay = true
		a.secret = secret
		if end := time.UnixMilli(c.waitUntil).Add(-a.b.grace); end.Before(a.waitEnd) {
			a.waitEnd = end
		}
	}
	a.unknown = false
	a.name = name
	return true, nil
}

// ended is the error of a keyed acquire whose recorded grant has ended.
func (a *acquirer) ended() error {
	return fmt.Errorf("zk acquire %q: the grant of this idempotency key ended: %w", a.req.Key, backend.ErrLeaseExpired)
}

func (b *Backend) exists(ctx context.Context, p string) (bool, error) {
	return call(ctx, func() (bool, error) {
		ok, _, err := b.conn.Exists(p)
		return ok, err
	})
}

// ensureShard creates the record's shard container (and _idem above it).
func (b *Backend) ensureShard(ctx context.Context, rec string) error {
	shard := rec[:strings.LastIndexByte(rec, '/')]
	create := func(p string) error {
		_, err := call(ctx, func() (string, error) { return b.conn.CreateContainer(p, nil, zk.FlagContainer, b.acl) })
		if errors.Is(err, zk.ErrNodeExists) {
			return nil
		}
		return err
	}
	err := create(shard)
	if !errors.Is(err, zk.ErrNoNode) {
		return err
	}
	if err := create(b.root + idemDir); errors.Is(err, zk.ErrNoNode) {
		if _, err := b.ensureRoot(ctx); err != nil {
			return err
		}
		if err := create(b.root + idemDir); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	return create(shard)
}

// idemState is the backend's bookkeeping of record sweeps.
type idemState struct {
	shards     int
	keep       time.Duration // beyond the end of the lease or wait
	sweepEvery time.Duration

	mu       sync.Mutex
	sweeping bool
	swept    map[string]time.Time // by shard path: at most shards entries
}

// maybeSweep sweeps the shard of record rec in the background unless this
// replica swept it less than sweepEvery ago or is sweeping already.
func (b *Backend) maybeSweep(rec string) {
	shard := rec[:strings.LastIndexByte(rec, '/')]
	s := &b.idem
	now := time.Now()
	s.mu.Lock()
	if s.sweeping || now.Sub(s.swept[shard]) < s.sweepEvery {
		s.mu.Unlock()
		return
	}
	if s.swept == nil {
		s.swept = map[string]time.Time{}
	}
	s.sweeping = true
	s.swept[shard] = now
	s.mu.Unlock()

	b.bgMu.Lock()
	defer b.bgMu.Unlock()
	if b.closed {
		s.mu.Lock()
		s.sweeping = false
		s.mu.Unlock()
		return
	}
	b.bg.Add(1)
	go func() {
		defer b.bg.Done()
		defer func() {
			s.mu.Lock()
			s.sweeping = false
			s.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(b.life, 5*time.Minute)
		defer cancel()
		_, _ = b.sweep(ctx, shard)
	}()
}

// sweep deletes the records of shard whose keep time has passed, reading
// them a few at a time; it returns how many it deleted.
func (b *Backend) sweep(ctx context.Context, shard string) (int, error) {
	names, err := call(ctx, func() ([]string, error) {
		names, _, err := b.conn.Children(shard)
		return names, err
	})
	if err != nil {
		if errors.Is(err, zk.ErrNoNode) {
			return 0, nil
		}
		return 0, err
	}
	var (
		mu      sync.Mutex
		deleted int
		wg      sync.WaitGroup
		sem     = make(chan struct{}, 16)
	)
	for _, n := range names {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func(p string) {
			defer wg.Done()
			defer func() { <-sem }()
			r, err := call(ctx, func() (nodeRead, error) {
				raw, st, err := b.conn.Get(p)
				return nodeRead{stat: st, raw: raw}, err
			})
			if err != nil {
				return
			}
			raw, st := r.raw, r.stat
			var rec idemRecord
			if json.Unmarshal(raw, &rec) == nil && !b.clock.Overdue(time.UnixMilli(rec.Keep)) {
				return
			}
			// Versioned: a record written anew meanwhile stays.
			if b.delete(ctx, p, st.Version) == nil {
				mu.Lock()
				deleted++
				mu.Unlock()
			}
		}(shard + "/" + n)
	}
	wg.Wait()
	return deleted, ctx.Err()
}
