package httpapi

import (
	"encoding/json"
	"errors"
	"math/big"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

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
		`{"ttl_ms": 99}`, `{"wait_ms": -1}`, `{"owner": null}`, `{"ttl_ms": 1e3}`, `{"x": 1}`, `[1]`, `{} x`, `"s"`, `null`,
		// The input rules: exact member names, no duplicates, integral
		// numbers in any notation, owner in characters.
		`{"TTL_MS": 1000}`, `{"Owner": "x", "OWNER": "y"}`, `{"owner": "x", "owner": "y"}`, `{"ttl_ms": 1000.0}`,
		`{"ttl_ms": 1.5e3}`, `{"ttl_ms": 1000.5}`, `{"ttl_ms": 1e999999999}`, `{"ttl_ms": -0.0e-5}`,
		`{"owner": "` + strings.Repeat("😀", 256) + `"}`, `{"owner": "` + strings.Repeat("é", 257) + `"}`} {
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
		if p.ttl < lease.MinTTL || p.ttl > lease.MaxTTL || p.wait < 0 || p.wait > lease.MaxWait || utf8.RuneCountInString(p.owner) > lease.MaxOwner {
			t.Fatalf("decode(%q) accepted out-of-range params %+v", body, p)
		}
	})
}

// An integer field takes exactly the JSON numbers whose value is an integer
// in int64's range, in any notation: integral agrees with exact rational
// arithmetic (math/big) on every short number.
func FuzzJSONInteger(f *testing.F) {
	for _, s := range []string{"0", "-0", "1000", "1000.0", "1e3", "1.5e3", "150000e-2", "1000.5", "0.05e2", "1E+3",
		"9223372036854775807", "9223372036854775808", "-9223372036854775808", "1e19", "1e-3", "3600000.0000000000000001"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var num json.Number
		if len(s) > 80 || json.Unmarshal([]byte(s), &num) != nil || strings.ContainsAny(s, " \t\r\n\"") {
			return // not a bare JSON number, or too long to check with big.Rat quickly
		}
		r, ok := new(big.Rat).SetString(s)
		if !ok {
			t.Fatalf("big.Rat cannot read JSON number %q", s)
		}
		want := r.IsInt() && r.Num().IsInt64()
		got, gotOK := integral(s)
		if gotOK != want || gotOK && got != r.Num().Int64() {
			t.Fatalf("integral(%q) = %d, %v; want %v (%s)", s, got, gotOK, want, r.RatString())
		}
	})
}

// Renew and release bodies: a lease id is either refused with
// invalid_lease_id or has the shape lockd issues, a renew's TTL is zero
// (keep the lease's) or within the contract, and every refusal is a 4xx
// with a code.
func FuzzDecodeLease(f *testing.F) {
	for _, s := range []string{`{"lease_id": "AAAAAAAAAAAAAAAAAAAAAA"}`, `{"lease_id": ""}`, `{"lease_id": "a/b"}`,
		`{"lease_id": "x", "ttl_ms": 100}`, `{"lease_id": "AAAAAAAAAAAAAAAAAAAAAA", "ttl_ms": 3600001}`, `{}`, `{"lease_id": 5}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var rn renewBody
		err := decodeBytes(body, &rn)
		var id string
		if err == nil {
			id, err = checkLeaseID(rn.LeaseID)
		}
		var ttl time.Duration
		if err == nil {
			ttl, err = msField("ttl_ms", rn.TTLMs, 0, lease.MinTTL, lease.MaxTTL)
		}
		wantRequestError(t, body, err)
		if err == nil && (!lease.ValidID(id) || ttl != 0 && (ttl < lease.MinTTL || ttl > lease.MaxTTL)) {
			t.Fatalf("renew %q accepted: id %q ttl %v", body, id, ttl)
		}

		var rl releaseBody
		err = decodeBytes(body, &rl)
		if err == nil {
			id, err = checkLeaseID(rl.LeaseID)
		}
		wantRequestError(t, body, err)
		if err == nil && !lease.ValidID(id) {
			t.Fatalf("release %q accepted lease id %q", body, id)
		}
	})
}

// List's query: only prefix, after and limit, each a valid key start and
// a limit in range; anything else a 4xx with a code.
func FuzzListQuery(f *testing.F) {
	for _, s := range []string{"", "prefix=a", "prefix=a&after=a.b&limit=10", "limit=0", "limit=1001", "limit=x",
		"prefix=%2F", "sort=key", "prefix=a&prefix=b", "limit=1&limit=2", "%zz", "after=" + strings.Repeat("k", 201)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return // net/http hands the handler what it could parse; that is tested below
		}
		lq, err := parseListQuery(q)
		wantRequestError(t, []byte(raw), err)
		if err != nil {
			return
		}
		if lq.limit < 1 || lq.limit > maxListLimit || (lq.prefix != "" && !ValidKey(lq.prefix)) || (lq.after != "" && !ValidKey(lq.after)) {
			t.Fatalf("query %q accepted as %+v", raw, lq)
		}
	})
}

func wantRequestError(t *testing.T, input []byte, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var re *requestError
	if !errors.As(err, &re) || re.status/100 != 4 || re.code == "" {
		t.Fatalf("%q refused with %v, want a 4xx request error with a code", input, err)
	}
	if p := problemFor(err); p.Status != re.status || p.Code != re.code || p.Title == "" || p.Detail == "" {
		t.Fatalf("%q: problem %+v is incomplete", input, p)
	}
}
