// Package etcd keeps lockd's locks in etcd, with etcd's own primitives: a
// queue of keys ordered by create revision, leases, transactions and watches.
//
// # Layout
//
// Every acquire of lock K is one key <prefix>q/<K>/~<seq>.<id>, id random,
// seq a 20-digit sequence number; "~<seq>.<id>" is the grant's lease id. Lock
// keys never contain '/', so the range <prefix>q/<K>/ holds K's entries and
// no other lock's. Entries are written only at the end of the queue by key
// (queue.go), so key order is create-revision order: the first key is the
// head of the queue; it holds the lock when its record carries a deadline.
// Entries behind it are waiters, served in that order (FIFO).
//
// Elections live the same way under <prefix>e/<name>/ (election.go): the
// record also carries the leader's value, the term is the fencing token, and
// observers follow the range with one watch and a timer (observe.go), as
// watchers of a lock key do (watch.go); both keep a copy of the range
// (mirror.go).
//
// Sessions live under <prefix>s/ (session.go): a grant made in one carries
// the session's name in its record and takes the session's deadline, so one
// write renews every grant of the session.
//
// # Fencing token
//
// The token is the create revision of the grant's entry. Revisions grow over
// the whole cluster's history. An entry is granted only when no entry with a
// lower create revision is left in its range (the grant transaction checks
// exactly that), so grants of one lock are made in create-revision order and
// tokens strictly increase. A waiter that leaves the queue is never granted
// (the grant also checks the entry still exists), so its revision is skipped,
// never reused. Renewing rewrites the entry, which keeps its create revision.
//
// # Millisecond leases on whole-second etcd leases
//
// etcd leases have whole-second TTLs and a minimum of about two seconds, so
// the contract's lease lives in the record: its deadline (unix ms, the
// granting lockd's clock). The etcd lease attached to the entry only collects
// garbage: it is chosen to outlive the deadline by at least two seconds, so
// etcd never frees a lock early. Whoever notices an entry past its deadline (an
// acquirer, the waiter behind it, whose timer fires at the deadline, a
// release) removes it with a delete conditioned on its mod revision, so a
// renew that won the race is never undone. Entries share etcd leases by the
// ten seconds in which their garbage collection is due (see leasePool), so an
// acquire costs one write, not a lease grant and a write.
//
// Waiters' entries hang on one short lease per Backend, kept alive while the
// Backend lives: the queue entries of a lockd that died disappear within a
// few seconds, and a waiter whose client left deletes its entry at once.
//
// # Wake-ups
//
// A waiter watches only the entry ahead of it. The watch is opened at the
// current revision, which etcd serves at once; a watch opened at a past
// revision is "unsynced" and served by a loop that runs every 100 ms — the
// reason etcd's concurrency.Mutex hands a lock over in about 100 ms. The entry
// right behind the holder also sets a timer at the holder's deadline; the
// others at the deadline plus a grace, should that waiter be gone.
//
// # Cost under contention
//
// Which entry is ahead is asked by key (the head is the first key, the
// predecessor the entry one sequence number below), a few keys per look
// whatever the queue's length, on etcd's read path; the one guarded write
// that grants runs only once nothing is ahead, and compares only the names
// below the waiter's (none, then). A transaction that compares against a
// whole queue runs in etcd's serial apply loop and reads every entry, so
// with thousands of waiters on a key it must stay rare: an acquire of a key
// this instance found held in the last ten seconds reads before it writes,
// any other tries the write at once (one round trip when the key is free).
//
// # History
//
// Every acquire writes a key and every release deletes one, so etcd's history
// grows with every grant until it is compacted: uncompacted, the prefix reads
// above walk every key a lock ever had and the database fills its quota. The
// embedded server compacts itself (Compactor); an external cluster compacts
// on its own or through lockd's --etcd-compact-every. lockd reads history
// only to resume a key's event stream from its cursor (watch.go): other
// watches start at the current revision, and a watch or snapshot read that
// meets a compaction looks again.
//
// # Files
//
// queue.go holds the layout and records, admission.go how round trips are
// let through under contention, acquire.go acquiring and waiting,
// idempotency.go retried acquires, ops.go renew, release and inspection,
// session.go sessions, clock.go the replicas' clock comparison, compact.go and leasepool.go the
// store's upkeep.
//
// # Clocks
//
// Deadlines are written and read by lockd replicas, each with its own clock,
// through one policy (lease.Clock): a holder's lease ends at its deadline, and
// anyone else removes the grant only once the deadline plus the declared
// skew (Options.Clock.MaxSkew) has passed. Replicas measure their clocks
// against each other through heartbeats under <prefix>clock/ (ClockOffset).
//
// This package never releases a lock on Close: grants run on in etcd.
package etcd

import (
	"context"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

// Options configures a Backend. The zero value works.
type Options struct {
	// Prefix is put before every key lockd writes; default "/lockd/".
	Prefix string
	// OpTimeout bounds one round trip to etcd, after which the call fails
	// with backend.ErrUnavailable; default 5 s.
	OpTimeout time.Duration
	// WaiterLeaseTTL is the etcd lease of queue entries, kept alive while
	// this Backend runs: how long a dead lockd's waiters block a queue;
	// default 5 s.
	WaiterLeaseTTL time.Duration
	// MaxContendedOps bounds the round trips to etcd in flight at once
	// for acquirers that found their key held (see slot). Default 64.
	MaxContendedOps int
	// Clock decides every deadline (see lease.Clock); the zero value is
	// the system clock with no skew allowed.
	Clock lease.Clock
	// ClockHeartbeat is how often this Backend writes the heartbeat its
	// peers measure clock offsets by, once ClockOffset was called;
	// default 1 s.
	ClockHeartbeat time.Duration
	backend.Hooks
}

// Backend implements backend.Backend on an etcd cluster.
type Backend struct {
	cli  *clientv3.Client
	opts Options

	leases *leasePool
	busy   busyKeys
	seqs   *seqHints     // per space: elect has its own
	slots  chan struct{} // see slot

	life   context.Context // ends on Close
	cancel context.CancelFunc

	mu      sync.Mutex
	session clientv3.LeaseID // waiters' lease; 0 until the first wait or after it was lost

	clocks clockPeers // see ClockOffset

	space string   // "q/" for locks, "e/" for elections (see queue)
	elect *Backend // the election queues: this Backend's machinery under e/
}

var _ backend.Backend = (*Backend)(nil)

// New returns a Backend over cli. Close does not close cli: its owner does.
func New(cli *clientv3.Client, opts Options) *Backend {
	if opts.Prefix == "" {
		opts.Prefix = "/lockd/"
	}
	if opts.OpTimeout == 0 {
		opts.OpTimeout = 5 * time.Second
	}
	if opts.WaiterLeaseTTL == 0 {
		opts.WaiterLeaseTTL = 5 * time.Second
	}
	if opts.ClockHeartbeat <= 0 {
		opts.ClockHeartbeat = time.Second
	}
	if opts.MaxContendedOps <= 0 {
		opts.MaxContendedOps = 64
	}
	life, cancel := context.WithCancel(context.Background())
	b := &Backend{cli: cli, opts: opts, leases: newLeasePool(cli), slots: make(chan struct{}, opts.MaxContendedOps), life: life, cancel: cancel, space: "q/", seqs: &seqHints{}}
	// Elections run on the same queues, leases, admission and lifetime, in
	// their own range (with their own waiters' lease, granted on first use).
	b.elect = &Backend{cli: cli, opts: opts, leases: b.leases, slots: b.slots, life: life, cancel: cancel, space: "e/", seqs: &seqHints{}}
	return b
}

// fail maps an etcd error: the caller's context first, then unavailability.
func fail(ctx context.Context, op string, err error) error {
	return backend.Unavailable(ctx, "etcd", op, err)
}

func (b *Backend) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, b.opts.OpTimeout)
}

// Ping implements backend.Backend: a linearizable read of one key.
func (b *Backend) Ping(ctx context.Context) error {
	c, cancel := b.opCtx(ctx)
	defer cancel()
	if _, err := b.cli.Get(c, b.opts.Prefix+"ping"); err != nil {
		return fail(ctx, "ping", err)
	}
	return nil
}

// Close stops this Backend's background work. Grants stay in etcd; waiters'
// entries go with their lease within WaiterLeaseTTL if not removed first.
func (b *Backend) Close() error {
	b.cancel()
	return nil
}
