package zk

import (
	"strings"
	"testing"
	"time"

	"github.com/lockd/lockd/internal/lease"
)

// A queue node's name gives back what was put in it, whatever the owner
// says (even "-lock-", which is the marker before the sequence number).
func TestNodeNameRoundTrip(t *testing.T) {
	until := time.UnixMilli(1_790_000_000_123)
	for _, owner := range []string{"", "w1", "-lock-", "a-lock-0000000001", "ünïcødé / spaces", strings.Repeat("x", 256)} {
		secret := lease.NewID()
		name := nodeName(secret, 1500*time.Millisecond, until, owner, "") + "0000000042"
		c, ok := parseChild(name)
		if !ok {
			t.Fatalf("parseChild(%q) failed", name)
		}
		if c.owner != owner || c.ttl != 1500*time.Millisecond || c.waitUntil != until.UnixMilli() || c.seq != 42 {
			t.Errorf("parseChild(nodeName(owner %q)) = %+v", owner, c)
		}
		if !strings.HasPrefix(name, protected(secret)) || strings.Contains(name, secret) {
			t.Errorf("name %q must start with the secret's hash and never contain the secret", name)
		}
		id := leaseID(secret, name)
		if !lease.ValidID(id) || len(id) > lease.MaxIDLen {
			t.Errorf("lease id %q is not a valid lease id", id)
		}
		s, seq, ok := parseLease(id)
		if !ok || s != secret || seq != "0000000042" {
			t.Errorf("parseLease(%q) = %q, %q, %v", id, s, seq, ok)
		}
		if i, found := byLease([]child{{name: "other"}, c}, s, seq); !found || i != 1 {
			t.Errorf("byLease did not find the lease's node")
		}
	}
}

func TestParseRejectsForeignNames(t *testing.T) {
	for _, name := range []string{"", "lock-0000000001", "_c_short-lock-1", "_c_" + strings.Repeat("a", 32) + "-x-1-AA-lock-0000000001", "_c_" + strings.Repeat("a", 32) + "-10-1-!!-lock-0000000001"} {
		if c, ok := parseChild(name); ok {
			t.Errorf("parseChild(%q) = %+v, want rejected", name, c)
		}
	}
	for _, id := range []string{"", "x", lease.NewID(), lease.NewID() + ".12345", lease.NewID() + ".000000000x", lease.NewID() + ".0000000001x", "a.b.0000000001"} {
		if _, _, ok := parseLease(id); ok {
			t.Errorf("parseLease(%q) accepted", id)
		}
	}
}
