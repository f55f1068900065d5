package httpapi

import (
	"errors"
	"net/url"
	"regexp"
	"testing"

	"github.com/lockd/lockd/internal/lease"
)

var keyRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$`)

// Key validation agrees with the contract's grammar, and a valid key
// survives a trip through a URL path unchanged.
func FuzzValidKey(f *testing.F) {
	for _, k := range []string{"a", "job:nightly-report", "A.b_c:d-e", "-a", ".a", "", "a/b", "a b", "ü", "a\x00", "a%2F"} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, k string) {
		got := ValidKey(k)
		if want := keyRE.MatchString(k); got != want {
			t.Fatalf("ValidKey(%q) = %v, want %v", k, got, want)
		}
		if got && url.PathEscape(k) != k {
			t.Fatalf("valid key %q changes in a URL path: %q", k, url.PathEscape(k))
		}
	})
}

// Decoding never panics, and whatever it accepts is within the contract's
// ranges; whatever it refuses is a 4xx with a code.
func FuzzDecodeAcquire(f *testing.F) {
	for _, s := range []string{``, `{}`, `{"ttl_ms": 100}`, `{"ttl_ms": 3600000, "wait_ms": 300000, "owner": "x"}`,
		`{"ttl_ms": 99}`, `{"wait_ms": -1}`, `{"owner": null}`, `{"ttl_ms": 1e3}`, `{"x": 1}`, `[1]`, `{} x`, `"s"`, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var b acquireBody
		err := decodeBytes(body, &b)
		var p acquireParams
		if err == nil {
			p, err = b.params()
		}
		if err != nil {
			var re *requestError
			if !errors.As(err, &re) || re.status/100 != 4 || re.code == "" {
				t.Fatalf("decode(%q) failed with %v, want a 4xx request error with a code", body, err)
			}
			return
		}
		if p.ttl < lease.MinTTL || p.ttl > lease.MaxTTL || p.wait < 0 || p.wait > lease.MaxWait || len(p.owner) > lease.MaxOwner {
			t.Fatalf("decode(%q) accepted out-of-range params %+v", body, p)
		}
	})
}

// Renew and release bodies: a lease id is either refused with
// invalid_lease_id or has the shape lockd issues.
func FuzzDecodeLease(f *testing.F) {
	for _, s := range []string{`{"lease_id": "AAAAAAAAAAAAAAAAAAAAAA"}`, `{"lease_id": ""}`, `{"lease_id": "a/b"}`, `{"lease_id": "x", "ttl_ms": 100}`, `{}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var b renewBody
		if err := decodeBytes(body, &b); err != nil {
			return
		}
		id, err := checkLeaseID(b.LeaseID)
		if err == nil && !lease.ValidID(id) {
			t.Fatalf("accepted lease id %q", id)
		}
	})
}
