// Package lease holds what every part of lockd agrees on about leases: the
// allowed TTLs and waits, how lease ids are made, and how deadlines are
// computed and written. It keeps no state.
package lease

import (
	"crypto/rand"
	"encoding/base64"
	"time"
)

// Limits of the v1 API.
const (
	DefaultTTL = 15 * time.Second
	MinTTL     = 100 * time.Millisecond
	MaxTTL     = time.Hour
	MaxWait    = 5 * time.Minute
	MaxOwner   = 256 // characters (code points), as the spec's maxLength counts
	MaxIDLen   = 128 // bytes of a lease id, whatever the backend adds to it
)

// NewID returns a fresh lease id: 128 random bits, base64url without padding
// (22 characters). Backends may append their own suffix after a '.'.
func NewID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		// crypto/rand never fails on supported platforms; a lock service
		// must not hand out guessable capabilities if it ever does.
		panic("lease: crypto/rand failed: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// ValidID reports whether s has the shape of a lease id (it says nothing of
// whether the lease exists). It lets the API refuse garbage before it reaches
// a backend.
func ValidID(s string) bool {
	if len(s) == 0 || len(s) > MaxIDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case c == '-', c == '_', c == '.', c == '~':
		default:
			return false
		}
	}
	return true
}

// Deadline is when a lease of ttl granted at now runs out, truncated to the
// millisecond so that every store and every reader agrees on it.
func Deadline(now time.Time, ttl time.Duration) time.Time {
	return now.Add(ttl).Truncate(time.Millisecond)
}

// Format writes t as RFC 3339 in UTC with milliseconds, as the API does.
func Format(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.000Z07:00")
}
