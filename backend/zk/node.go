package zk

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

// A queue node's name carries what never changes once it is queued, so that
// whoever reads the queue (one getChildren) can hand the lock on without
// reading each waiter:
//
//	_c_<hash>-<ttl ms>-<wait until, Unix ms>-<owner, base64url>-lock-<seq>
//	_c_<hash>-<ttl ms>s<session>-<wait until>-<owner>-lock-<seq>   (in a session)
//
// A node made in a session (session.go) carries the session's hash after its
// TTL (the session's TTL when it queued); its deadline is the session's,
// read next to it wherever the node is read (Backend.read), and the deadline
// in its data only fills the field. Names without it are read as before.
//
// "_c_<hash>-" is Curator's protected prefix: hash is 128 bits of SHA-256
// of the lease's secret. The node's data holds what changes: the lease
// deadline and the TTL it was last set with (nodeData).
const (
	protectedPrefix = "_c_"
	lockMarker      = "-lock-"
	readMarker      = "-read-"  // in place of lockMarker: a reader of a read-write lock
	writeMarker     = "-write-" // and a writer
	hashLen         = 32        // hex characters
)

// nodeData is the changing part of a queue node: written at creation (the
// deadline it holds if it heads the queue at once), by the handoff that
// promotes it, and by every renew. Its data version is 0 until then.
type nodeData struct {
	// Deadline (Unix ms) is when the lease runs out while the node heads
	// the queue.
	Deadline int64 `json:"deadline_ms"`
	TTL      int64 `json:"ttl_ms"`
	// Value is an election candidate's (see election.go); locks have none.
	// Every rewrite of the node keeps it; only Proclaim changes it.
	Value string `json:"v,omitempty"`
	// Queued marks a read-write lock's node that waits (rwlock.go): its
	// deadline means nothing until its acquirer claims the grant.
	Queued bool `json:"q,omitempty"`
}

func (d nodeData) encode() []byte {
	b, _ := json.Marshal(d) // plain struct: cannot fail
	return b
}

func (d nodeData) deadline() time.Time { return time.UnixMilli(d.Deadline) }

// valid reports whether the lease still runs for its holder, by c: what a
// renew, a release and a holder's own claim check.
func (d nodeData) valid(c lease.Clock) bool { return c.Valid(d.deadline()) }

// overdue reports whether someone other than the holder may remove the
// grant, by c: its deadline plus the declared skew has passed.
func (d nodeData) overdue(c lease.Clock) bool { return c.Overdue(d.deadline()) }

func decodeData(p string, raw []byte) (nodeData, error) {
	var d nodeData
	if err := json.Unmarshal(raw, &d); err != nil {
		return d, fmt.Errorf("zk: node %s holds no lockd data: %w", p, err)
	}
	return d, nil
}

// child is one parsed queue node.
type child struct {
	name      string
	seq       int64
	ttl       time.Duration
	waitUntil int64 // Unix ms: queued behind the head after this, it is abandoned
	owner     string
	session   string        // the session's hash (session.go); "" for a lease of its own
	mode      string        // a read-write lock's node: "read" or "write" (rwlock.go); "" for a lock's
	delay     time.Duration // the grant's lock-delay (backend.LockDelayer); 0: none
}

// removable reports whether the grant of c, read as d, may be removed by
// anyone: its deadline plus its lock-delay is overdue (lease.Clock). Until
// then an expired grant stays where it is, delayed: not a holder, but
// nothing is granted in its place.
func (c child) removable(clk lease.Clock, d nodeData) bool {
	return clk.Overdue(d.deadline().Add(c.delay))
}

// delayedUntil is when c's grant, read as d, stops blocking anyone: its
// deadline plus its lock-delay plus the skew.
func (c child) delayedUntil(clk lease.Clock, d nodeData) time.Time {
	return clk.FreeAt(d.deadline().Add(c.delay))
}

// delay is the lock-delay in force of c's grant read as r (with the token
// r's czxid), or nil: its deadline is overdue and its delay is not.
func (c child) delayOf(clk lease.Clock, r nodeRead) *backend.Delay {
	if !r.data.overdue(clk) || c.removable(clk, r.data) {
		return nil
	}
	return &backend.Delay{Until: c.delayedUntil(clk, r.data), ExpiredToken: uint64(r.stat.Czxid)}
}

// abandoned reports whether the waiter may be removed from the queue, by
// clk: its replica's clock wrote waitUntil, so the declared skew is added.
func (c child) abandoned(clk lease.Clock) bool { return clk.Overdue(time.UnixMilli(c.waitUntil)) }

// nodeHash is what a node name shows of the lease's secret.
func nodeHash(secret string) string {
	sum := sha256.Sum256([]byte("lockd/zk/" + secret))
	return hex.EncodeToString(sum[:hashLen/2])
}

// protected is the start of the name of every node made for secret.
func protected(secret string) string { return protectedPrefix + nodeHash(secret) + "-" }

// nodeName is the name, without the sequence number ZooKeeper appends, of the
// node an acquire creates.
// sess is the session's hash, or "".
func nodeName(secret string, ttl time.Duration, waitUntil time.Time, owner, sess string) string {
	return queueName(secret, ttl, 0, waitUntil, owner, sess)
}

// queueName is nodeName for a grant that asks for a lock-delay (0: none),
// which the name then carries after its TTL ("d<ms>"): every handoff and
// every removal of the node as expired reads it from there.
func queueName(secret string, ttl, delay time.Duration, waitUntil time.Time, owner, sess string) string {
	if sess != "" {
		sess = "s" + sess
	}
	d := ""
	if delay > 0 {
		d = fmt.Sprintf("d%d", delay.Milliseconds())
	}
	return fmt.Sprintf("%s%d%s%s-%d-%s%s", protected(secret), ttl.Milliseconds(), d, sess, waitUntil.UnixMilli(),
		base64.RawURLEncoding.EncodeToString([]byte(owner)), lockMarker)
}

// parseChild reads a queue node's name; ok is false for foreign nodes.
func parseChild(name string) (c child, ok bool) {
	rest, found := strings.CutPrefix(name, protectedPrefix)
	if !found || len(rest) < hashLen+1 {
		return c, false
	}
	rest = rest[hashLen+1:]
	// The marker is the last one followed by digits only (an owner's
	// base64url may contain any of them).
	i, marker := -1, ""
	for _, m := range []string{lockMarker, readMarker, writeMarker} {
		if j := strings.LastIndex(rest, m); j > i {
			i, marker = j, m
		}
	}
	if i < 0 {
		return c, false
	}
	seq, err := strconv.ParseInt(rest[i+len(marker):], 10, 64)
	if err != nil {
		return c, false
	}
	switch marker {
	case readMarker:
		c.mode = "read"
	case writeMarker:
		c.mode = "write"
	}
	parts := strings.SplitN(rest[:i], "-", 3)
	if len(parts) != 3 {
		return c, false
	}
	ttlPart, sess, inSession := strings.Cut(parts[0], "s")
	if inSession && !isHex(sess, hashLen) {
		return c, false
	}
	ttlPart, delayPart, delayed := strings.Cut(ttlPart, "d")
	var delay int64
	if delayed {
		var err error
		if delay, err = strconv.ParseInt(delayPart, 10, 64); err != nil || delay <= 0 {
			return c, false
		}
	}
	ttl, err1 := strconv.ParseInt(ttlPart, 10, 64)
	waitUntil, err2 := strconv.ParseInt(parts[1], 10, 64)
	owner, err3 := base64.RawURLEncoding.DecodeString(parts[2])
	if err1 != nil || err2 != nil || err3 != nil {
		return c, false
	}
	return child{name: name, seq: seq, ttl: time.Duration(ttl) * time.Millisecond, waitUntil: waitUntil, owner: string(owner), session: sess, mode: c.mode, delay: time.Duration(delay) * time.Millisecond}, true
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}

// secretHash is the hash of the lease's secret that c's name shows.
func (c child) secretHash() string {
	return c.name[len(protectedPrefix) : len(protectedPrefix)+hashLen]
}

// leaseID is "<secret>.<seq>": the capability, and where its node is.
func leaseID(secret, name string) string { return secret + "." + name[len(name)-10:] }

// parseLease splits a lease id into its secret and sequence number; ok is
// false for anything this backend never made.
func parseLease(id string) (secret, seq string, ok bool) {
	secret, seq, found := strings.Cut(id, ".")
	if !found || len(secret) != 22 || len(seq) != 10 || !lease.ValidID(id) {
		return "", "", false
	}
	if _, err := strconv.ParseUint(seq, 10, 32); err != nil {
		return "", "", false
	}
	return secret, seq, true
}

// byLease finds the lease's node in q.
func byLease(q []child, secret, seq string) (int, bool) {
	prefix := protected(secret)
	for i, c := range q {
		if strings.HasPrefix(c.name, prefix) && strings.HasSuffix(c.name, seq) {
			return i, true
		}
	}
	return -1, false
}

func indexOf(q []child, name string) int {
	for i, c := range q {
		if c.name == name {
			return i
		}
	}
	return -1
}

// nodeRead is a node's data and stat. For a node in a session, data's
// Deadline and TTL are the session's as read with it (session.go).
type nodeRead struct {
	data nodeData
	stat *zk.Stat
	raw  []byte // only where the data is not a queue node's
	// sess is the node's session hash; sessVer the version its session's
	// node was read at, unless sessGone: it no longer exists.
	sess     string
	sessVer  int32
	sessGone bool
}
