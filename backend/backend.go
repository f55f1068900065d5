// Package backend is the contract between lockd's HTTP service and the stores
// that hold lock state (etcd, ZooKeeper, Redis, Redlock).
//
// Every promise of the contract is written on the method that keeps it, and
// backend/backendtest checks each promise against every implementation on a
// real server. Nothing above this package imports a client library, and no
// implementation may keep state that matters only in process memory: several
// lockd replicas over one store must behave as one service, and a restarted
// lockd must honour the grants it made before.
//
// Inputs are validated by the caller (keys, TTL ranges, owner length); a
// backend may assume them valid.
package backend

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Sentinel errors. Implementations wrap native errors with %w around one of
// these so that callers can map them with errors.Is.
var (
	// ErrHeld: the lock was not granted within the wait; somebody else holds
	// it or is ahead in the queue. The error is usually a *HeldError carrying
	// the holder.
	ErrHeld = errors.New("lock held")
	// ErrLeaseExpired: the lease no longer holds the lock: it expired, was
	// released, or never existed. A renew or release with it changes nothing.
	ErrLeaseExpired = errors.New("lease expired")
	// ErrUnavailable: the store could not be reached or did not answer in
	// time. The operation left no half-made state the caller must clean up
	// (a half-made grant, if any, expires or is removed by the backend).
	ErrUnavailable = errors.New("backend unavailable")
	// ErrIdempotencyKeyReused: an acquire carried the idempotency key of an
	// earlier acquire with a different fingerprint (another request under
	// the same key). Nothing was done.
	ErrIdempotencyKeyReused = errors.New("idempotency key reused")
	// ErrSessionExpired: the session is over: it expired, was closed, or
	// never existed (indistinguishable to the caller). Nothing is granted
	// in it any more and it cannot be renewed.
	ErrSessionExpired = errors.New("session expired")
	// ErrSessionBound: a renew named a lease granted in a session; such a
	// lease lives as long as its session and is renewed only through it.
	ErrSessionBound = errors.New("lease bound to a session")
)

// Unavailable is how every backend reports a store call that failed: when
// the caller's ctx has ended, ctx's error joined with the cause (the caller
// gave up; errors.Is(err, ErrUnavailable) is false); otherwise ErrUnavailable
// wrapped as "<store> <op>: backend unavailable: <cause>".
func Unavailable(ctx context.Context, store, op string, err error) error {
	if ctx.Err() != nil {
		return errors.Join(ctx.Err(), fmt.Errorf("%s %s: %w", store, op, err))
	}
	return fmt.Errorf("%s %s: %w: %w", store, op, ErrUnavailable, err)
}

// Opened is a backend that its package's Open connected from a
// configuration (lockd's flags): the backend, what lockd says about it at
// start, and how to close it with everything Open opened for it.
type Opened struct {
	Backend  Backend
	Describe string // where the store is and how lockd reaches it, for the start-up line
	Close    func() // closes Backend, then what Open opened for it, in reverse
}

// HeldError is returned (wrapping ErrHeld) when an acquire gives up. Holder
// is nil when the lock was freed between the last try and the give-up, or the
// backend could not read it.
type HeldError struct {
	Key    string
	Holder *Holder
	// Delay is set when a lock-delay kept the acquire out (see
	// LockDelayer); Holder is then nil.
	Delay *Delay
}

func (e *HeldError) Error() string {
	if e.Delay != nil && e.Holder == nil {
		return fmt.Sprintf("lock %q delayed until %s (token %d expired)", e.Key, e.Delay.Until.Format(time.RFC3339Nano), e.Delay.ExpiredToken)
	}
	if e.Holder == nil {
		return fmt.Sprintf("lock %q held", e.Key)
	}
	return fmt.Sprintf("lock %q held by %q (token %d)", e.Key, e.Holder.Owner, e.Holder.Token)
}

func (e *HeldError) Unwrap() error { return ErrHeld }

// Holder describes the current holder of a lock, as shown to other callers.
// It never carries the lease id: that is the holder's capability.
type Holder struct {
	Owner     string
	Token     uint64
	ExpiresAt time.Time
}

// AcquireRequest asks for a lock.
type AcquireRequest struct {
	Key   string
	Owner string        // free text shown in inspection; may be empty
	TTL   time.Duration // lease length, counted from the grant; 0 with Session
	// Session, when set, is the id of a session (see Sessioner) the grant
	// lives in instead of a TTL of its own: the grant shows the session's
	// TTL and deadline, and ends when the session does.
	Session string
	// Wait is how long to queue for the lock. Zero means a single try.
	// Waiters are served in arrival order (FIFO) unless the backend's
	// conformance run declares otherwise.
	Wait time.Duration
	// Idempotency, when its Key is set, makes a retry of this acquire safe;
	// see Idempotent.
	Idempotency Idempotency
	// LockDelay, 0..MaxLockDelay, is how long nothing is granted in this
	// grant's place after it expires (see LockDelayer).
	LockDelay time.Duration
}

// Idempotency identifies one logical acquire across its retries. The HTTP
// layer builds both fields; a backend stores and compares them and never
// interprets them.
type Idempotency struct {
	// Key names the acquire: a hash of the caller, the lock key and the
	// client's Idempotency-Key, in [A-Za-z0-9_-], at most 64 bytes. Empty:
	// the acquire is not idempotent.
	Key string
	// Fingerprint is a hash of the fields that define the grant (owner,
	// TTL; not Wait): a retry must carry the same.
	Fingerprint string
}

// Idempotent is implemented by backends that honour
// AcquireRequest.Idempotency. For such a backend, an acquire with a Key is
// recorded in the same atomic store operation that queues it or grants it
// (so the record holds across replicas and restarts), and a later acquire
// with the same Key:
//   - with another Fingerprint fails with ErrIdempotencyKeyReused;
//   - while the recorded grant holds, returns that same grant (LeaseID,
//     Token, ExpiresAt) without changing it;
//   - while the recorded acquire still waits, waits in its place (FIFO) and
//     returns the grant when it comes;
//   - once the recorded grant ended (released, expired), fails with
//     ErrLeaseExpired.
//
// An acquire that was refused (ErrHeld, ErrUnavailable, ctx's error) leaves
// no record: a retry runs afresh. Records are kept at least as long as
// IdempotencyWindow after their first use.
type Idempotent interface {
	Backend
	// IdempotentAcquire is a marker: the backend honours Idempotency.
	IdempotentAcquire()
}

// IdempotencyWindow is how long a backend keeps an idempotency record at
// least, counted from the acquire that made it.
const IdempotencyWindow = time.Hour

// Grant is a held lock.
type Grant struct {
	Key string
	// LeaseID is the capability to renew and release: an opaque string of
	// URL-safe characters ([A-Za-z0-9._~-], at most 128 bytes) holding at
	// least 128 random bits. Nobody can renew or release without it.
	LeaseID string
	// Token is the fencing token: strictly greater than every token ever
	// granted for Key before, across restarts and replicas (within the
	// backend's stated limits).
	Token     uint64
	Owner     string
	TTL       time.Duration
	ExpiresAt time.Time
	// Session is set when the grant lives in a session: it is renewed
	// only through the session, and TTL and ExpiresAt are the session's.
	Session bool
	// Replayed is set when an idempotent retry got the grant an earlier
	// attempt with the same key made (see Idempotent).
	Replayed bool
}

// LockState is what inspection shows of one key.
type LockState struct {
	Key     string
	Held    bool
	Holder  *Holder // nil when not held
	Waiters int     // queued acquirers, when the backend can count them
	// DelayedUntil is the end of a lock-delay in force (zero: none).
	DelayedUntil time.Time
}

// Backend holds lock state. All methods are safe for concurrent use.
// Every blocking method takes ctx first and returns promptly with an error
// wrapping ctx.Err() when it is cancelled.
type Backend interface {
	// Acquire grants req.Key to the caller when nobody holds an unexpired
	// lease on it, waiting up to req.Wait in FIFO order. The returned grant's
	// TTL starts at the grant; its ExpiresAt is computed from the grant. A
	// backend that declares it (backendtest.Options.ValidityBelowTTL)
	// reports less than req.TTL — what the holder may count on, such as
	// Redlock's validity — never more.
	//
	// Errors: ErrHeld (as *HeldError) when not granted within req.Wait;
	// ErrUnavailable when the store cannot be reached; ctx's error when ctx
	// ends first, in which case the waiter has left the queue and nothing is
	// left behind (if a grant raced with the cancellation, it is released).
	//
	// Waiting is woken by the store's own notification (watch, pub/sub)
	// or by a timer set at the holder's known expiry, never by polling —
	// unless the backend documents otherwise.
	Acquire(ctx context.Context, req AcquireRequest) (Grant, error)

	// Renew extends an unexpired lease to ttl from now, keeping its token;
	// ttl 0 keeps the lease's current TTL. It never resurrects an expired
	// lease.
	//
	// Errors: ErrLeaseExpired when leaseID does not hold key (expired,
	// released, foreign or unknown — indistinguishable to the caller);
	// ErrSessionBound when the lease lives in an unexpired session;
	// ErrUnavailable.
	Renew(ctx context.Context, key, leaseID string, ttl time.Duration) (Grant, error)

	// Release frees key if leaseID holds it; the next waiter is woken.
	//
	// Errors: ErrLeaseExpired as for Renew (a foreign or stale lease never
	// releases the true holder); ErrUnavailable.
	Release(ctx context.Context, key, leaseID string) error

	// Inspect shows the key's holder (when its lease is unexpired) and how
	// many acquirers wait. An unknown key is simply not held.
	Inspect(ctx context.Context, key string) (LockState, error)

	// List returns held locks whose keys start with prefix, ordered by key,
	// starting after the key `after` (empty: from the start), at most limit
	// of them. Expired grants not yet removed are left out.
	List(ctx context.Context, prefix, after string, limit int) ([]LockState, error)

	// Ping reports whether the store is reachable (ErrUnavailable if not).
	Ping(ctx context.Context) error

	// Close releases the backend's connections. It never releases locks:
	// their leases run on in the store.
	Close() error
}

// ClockChecker is implemented by backends whose safety depends on the lockd
// replicas' clocks: they write lease deadlines by one replica's clock that
// other replicas enforce by theirs (see lease.Clock). A backend whose leases
// run on the store's own clock does not implement it.
type ClockChecker interface {
	// ClockOffset estimates this replica's clock minus a reference every
	// replica shares. ErrUnavailable when the store cannot be asked.
	ClockOffset(ctx context.Context) (ClockReading, error)
}

// ClockReading is one estimate of a replica's clock offset.
type ClockReading struct {
	// Offset is this replica's clock minus the reference (positive: ahead).
	Offset time.Duration
	// Uncertainty bounds the estimate's error either way (about half a
	// round trip to the reference).
	Uncertainty time.Duration
	// Reference names what the clock was compared with.
	Reference string
	// Peers is how many other replicas the reference was made of, for
	// backends that compare replicas with each other; 0 otherwise.
	Peers int
}

// Hooks lets the service observe what a backend notices on its own. Every
// field may be nil. Backends embed it in their options.
type Hooks struct {
	// OnExpire is called when this backend removes a grant whose lease ran
	// out (a holder that stopped renewing).
	OnExpire func(Expiry)
}

// Expiry is a grant a backend removed because its lease ran out. Key and
// Token name the grant uniquely; there is no lease id: it is the holder's
// capability and not every backend can read it back.
type Expiry struct {
	Key   string
	Owner string
	Token uint64
}

// Expired calls OnExpire when set.
func (h Hooks) Expired(e Expiry) {
	if h.OnExpire != nil {
		h.OnExpire(e)
	}
}

// MaxElectionValue is the largest election value, in bytes of UTF-8.
const MaxElectionValue = 4 << 10

// Elector is implemented by backends that run leader elections. It is an
// optional capability, found by type assertion; a backend without it answers
// 501 not_supported on the election routes.
type Elector interface {
	Elections() Elections
}

// Elections keeps leader elections. An election is a FIFO lock with a
// value, in its own namespace (an election "x" and a lock "x" never meet);
// the term is the grant's fencing token: it increases across leaders and
// stays the same across proclaims and renewals. At most one unexpired
// leader exists per name, under the same clock policy as locks (lease.Clock).
type Elections interface {
	// Campaign makes the caller leader of req.Name once nobody ahead of it
	// in line holds an unexpired term, waiting up to req.Wait (FIFO).
	//
	// Errors: ErrHeld as *NotLeaderError (carrying the leader, when one
	// could be read) when not leader within req.Wait; ErrUnavailable; ctx's
	// error, in which case the candidate has left the line.
	Campaign(ctx context.Context, req CampaignRequest) (Leadership, error)

	// Proclaim sets a new value for the leader's term, keeping the term
	// and the deadline.
	//
	// Errors: ErrLeaseExpired when leaseID is not the unexpired leader of
	// name (expired, resigned, still waiting, foreign, unknown);
	// ErrUnavailable.
	Proclaim(ctx context.Context, name, leaseID, value string) (Leadership, error)

	// Renew extends the leader's lease to ttl from now (0: its current
	// TTL), keeping term and value; never resurrects. Errors as Proclaim.
	Renew(ctx context.Context, name, leaseID string, ttl time.Duration) (Leadership, error)

	// Resign ends the leader's term at once; the next candidate in line
	// becomes leader. Errors as Proclaim.
	Resign(ctx context.Context, name, leaseID string) error

	// Leader shows the unexpired leader of name, if any, and how many
	// candidates wait behind it.
	Leader(ctx context.Context, name string) (ElectionState, error)

	// Observe streams the election's state: first the current state, then
	// every change in store order. A new term or a new value in the same
	// term is a leader event; a leader resigning, or its lease running out
	// (delivered by a timer at its deadline plus the declared skew, even
	// when nobody touches the name), is a no_leader event. Terms only
	// increase along a stream, and every change of leader and every
	// absence of one is delivered; proclaims may coalesce. Renewals are
	// not events.
	//
	// The channel never closes silently: its last event carries Err (ctx's
	// error, or ErrUnavailable when the stream could not go on), after
	// which the caller must read the state afresh.
	Observe(ctx context.Context, name string) (<-chan ElectionEvent, error)

	// Features says how the backend keeps elections.
	Features() ElectionFeatures
}

// ElectionFeatures describe a backend's elections in GET /v1/capabilities.
type ElectionFeatures struct {
	// Observe is how changes reach observers: "watch" (the store notifies)
	// or "poll".
	Observe string `json:"observe"`
}

// CampaignRequest asks to become leader.
type CampaignRequest struct {
	Name  string
	Owner string
	Value string // at most MaxElectionValue bytes
	TTL   time.Duration
	Wait  time.Duration
	// Session, when set, replaces TTL as for AcquireRequest.Session.
	Session string
	// LockDelay as for AcquireRequest.LockDelay.
	LockDelay time.Duration
}

// Leadership is a won election: the leader's own view, with its capability.
type Leadership struct {
	Name      string
	LeaseID   string
	Term      uint64
	Owner     string
	Value     string
	TTL       time.Duration
	ExpiresAt time.Time
}

// Leader is the leader as everyone else sees it (never its lease id).
type Leader struct {
	Term      uint64
	Owner     string
	Value     string
	ExpiresAt time.Time
}

// ElectionState is what Leader shows of one election.
type ElectionState struct {
	Name       string
	Leader     *Leader // nil when nobody leads
	Candidates int     // waiting behind the leader
	// DelayedUntil is the end of a lock-delay in force (zero: none).
	DelayedUntil time.Time
}

// Reasons an election has no leader.
const (
	ReasonResigned = "resigned"
	ReasonExpired  = "expired"
)

// ElectionEvent is one event of Observe. Exactly one of Leader, NoLeader and
// Err is set.
type ElectionEvent struct {
	Leader   *Leader
	NoLeader *NoLeader
	Err      error
}

// NoLeader says the election has no leader. LastTerm is the term that ended
// (0 when the stream never saw one); Reason is ReasonResigned or
// ReasonExpired, or empty in a stream's first event when the store cannot
// tell.
type NoLeader struct {
	LastTerm uint64
	Reason   string
}

// NotLeaderError is returned (wrapping ErrHeld) when a campaign gives up.
type NotLeaderError struct {
	Name   string
	Leader *Leader // nil when nobody could be read as leader
	// Delay is set when a lock-delay kept the candidate out.
	Delay *Delay
}

func (e *NotLeaderError) Error() string {
	if e.Delay != nil && e.Leader == nil {
		return fmt.Sprintf("election %q delayed until %s (term %d expired)", e.Name, e.Delay.Until.Format(time.RFC3339Nano), e.Delay.ExpiredToken)
	}
	if e.Leader == nil {
		return fmt.Sprintf("election %q: not leader", e.Name)
	}
	return fmt.Sprintf("election %q led by %q (term %d)", e.Name, e.Leader.Owner, e.Leader.Term)
}

func (e *NotLeaderError) Unwrap() error { return ErrHeld }

// Unordered is implemented by backends that do not serve waiters in arrival
// order; NoFIFO says why (GET /v1/capabilities shows it).
type Unordered interface {
	NoFIFO() string
}

// Sessioner is implemented by backends that keep sessions. It is an optional
// capability, found by type assertion; a backend without it answers 501
// not_supported on the session routes and refuses AcquireRequest.Session.
type Sessioner interface {
	Sessions() Sessions
}

// Sessions keeps sessions: many grants kept alive by one renew.
//
// A session's deadline is state in the store, under the same clock policy
// as a lease (lease.Clock): its holder counts on it until the deadline
// (Valid), anyone else treats it as over once it is Overdue. When a session
// ends — expiry or Close — every grant made in it ends with it, even when no
// lockd that made them is alive, and every acquire waiting in it leaves its
// queue at once with ErrSessionExpired. A session is never resurrected.
//
// A grant in a session keeps its own lease id and token (never derived from
// the session id), so a stale release of an earlier grant of the same
// session and key fails with ErrLeaseExpired. Releasing it works as for any
// grant; renewing it directly fails with ErrSessionBound.
type Sessions interface {
	// Open starts a session of ttl for owner.
	//
	// Errors: ErrUnavailable.
	Open(ctx context.Context, owner string, ttl time.Duration) (Session, error)

	// Renew extends an unexpired session to ttl from now (0: its current
	// TTL), and with it every grant made in it, in one store write.
	//
	// Errors: ErrSessionExpired (expired, closed, foreign or unknown);
	// ErrUnavailable.
	Renew(ctx context.Context, id string, ttl time.Duration) (Session, error)

	// Close ends the session at once: its grants are released cleanly
	// (their next waiters are woken) and its waiting acquires leave their
	// queues.
	//
	// Errors: ErrSessionExpired as for Renew; ErrUnavailable.
	Close(ctx context.Context, id string) error

	// Get shows an unexpired session (to check a caller's rights on its
	// owner before acting on it).
	//
	// Errors: ErrSessionExpired as for Renew; ErrUnavailable.
	Get(ctx context.Context, id string) (Session, error)

	// Features says how the backend keeps sessions.
	Features() SessionFeatures
}

// Session is an open session, as its holder sees it.
type Session struct {
	// ID is the session's capability, with the same shape and strength as
	// Grant.LeaseID (at least 128 random bits).
	ID        string
	Owner     string
	TTL       time.Duration
	ExpiresAt time.Time
}

// SessionFeatures describe a backend's sessions in GET /v1/capabilities.
type SessionFeatures struct {
	// Expiry is where a session's end is decided: "store" (state in the
	// store, enforced with no lockd alive).
	Expiry string `json:"expiry"`
}

// Unsupported is implemented by backends that leave out optional
// capabilities on purpose. It names each one left out as GET
// /v1/capabilities calls it (one of the Feature names), with the reason,
// which the capabilities show.
type Unsupported interface {
	Unsupported() map[string]string
}

// The names of the optional features in GET /v1/capabilities, as
// Unsupported keys them.
const (
	FeatureElections = "elections"
	FeatureEvents    = "events"
	FeatureSessions  = "sessions"
)

// Watcher is implemented by backends that stream a lock key's events. It is
// an optional capability, found by type assertion; a backend without it
// answers 501 not_supported on GET /v1/locks/{key}/events.
type Watcher interface {
	// Watch streams key's events, in store order, and so in token order.
	//
	// With after empty, the first event is a KeySnapshot: the key's state
	// now (held, with the holder's token, owner and deadline; or free).
	// Then come KeyAcquired {token, owner, expires_at}, KeyReleased
	// {token} and KeyExpired {token}. Every grant seen is ended by exactly
	// one KeyReleased or KeyExpired before the next KeyAcquired. Renewals
	// are not events. KeyExpired comes from a timer at the holder's
	// deadline plus the declared skew (lease.Clock.FreeAt), confirmed by a
	// re-read of the store, even when nobody touches the key — never
	// before the deadline, and not from the store's own clean-up.
	//
	// With after set to the Cursor of an event an earlier stream of the
	// same key delivered, Watch resumes: it delivers the events that
	// followed that one (possibly repeating some: at least once, dedupe by
	// Cursor), with no snapshot first, when it can show that nothing was
	// missed — by replaying the store's history (WatchFeatures.Replay), or
	// because the key is still in the state the cursor names (the same
	// grant holds). Otherwise — a cursor it does not know, malformed, of
	// another key, or past the store's history, or a change it cannot
	// replay — the first event is a KeySnapshot with Resync set. A resume
	// never fails because of its cursor.
	//
	// Watch returns once the stream's starting point is read: every change
	// after it returns is delivered. The channel never closes silently:
	// its last event carries Err (ctx's error, or ErrUnavailable when the
	// stream could not go on, after which the caller may Watch again from
	// the last Cursor). Errors from Watch itself: ErrUnavailable, ctx's
	// error.
	Watch(ctx context.Context, key, after string) (<-chan KeyEvent, error)

	// WatchFeatures says how the backend keeps key events.
	WatchFeatures() WatchFeatures
}

// WatchFeatures describe a backend's key events in GET /v1/capabilities.
type WatchFeatures struct {
	// Replay: a resumed stream delivers the events it missed (within the
	// store's history). Without it a resume continues only when nothing
	// happened meanwhile, and resyncs otherwise.
	Replay bool `json:"replay"`
	// Changes is how changes reach watchers: "watch" (the store notifies)
	// or "poll".
	Changes string `json:"changes"`
	// ExpiredDelay, when set, says plainly when KeyExpired may come later
	// than the deadline plus the declared skew on this backend.
	ExpiredDelay string `json:"expired_delay,omitempty"`
}

// Kinds of KeyEvent.
const (
	KeySnapshot = "snapshot"
	KeyAcquired = "acquired"
	KeyReleased = "released"
	KeyExpired  = "expired"
)

// KeyEvent is one event of Watch: Kind is set, or Err (the last event).
type KeyEvent struct {
	Kind string
	// Held: for a KeySnapshot, whether an unexpired grant holds the key.
	Held bool
	// Token names the grant the event is about (the holder's, in a held
	// snapshot; 0 in a free one).
	Token uint64
	// Owner and ExpiresAt: the holder's, in KeyAcquired and a held
	// KeySnapshot.
	Owner     string
	ExpiresAt time.Time
	// Resync, in a KeySnapshot of a resumed Watch: the stream could not
	// resume from the cursor asked, and events may have been missed.
	Resync bool
	// Cursor is where a later Watch resumes after this event: an opaque
	// string of the backend's making, at most 128 bytes of
	// [A-Za-z0-9._~:-] (so it can be an SSE id).
	Cursor string
	Err    error
}

// StateCursor is a cursor for backends that keep no history of a key: it
// names the state an event left the key in (held by token, or free after
// token; 0 when no grant was seen). ParseStateCursor reads it back. Such a
// backend resumes without a snapshot only when the key is still held by the
// same token; "free after token" resumes only when the backend can tell that
// no grant came and went meanwhile.
func StateCursor(held bool, token uint64) string {
	if held {
		return fmt.Sprintf("h.%d", token)
	}
	return fmt.Sprintf("f.%d", token)
}

// ParseStateCursor reads a StateCursor; ok is false for any other string.
func ParseStateCursor(s string) (held bool, token uint64, ok bool) {
	var kind byte
	switch {
	case strings.HasPrefix(s, "h."):
		kind = 'h'
	case strings.HasPrefix(s, "f."):
		kind = 'f'
	default:
		return false, 0, false
	}
	n, err := strconv.ParseUint(s[2:], 10, 64)
	if err != nil || strconv.FormatUint(n, 10) != s[2:] {
		return false, 0, false
	}
	return kind == 'h', n, true
}
