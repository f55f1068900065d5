package httpapi

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// The input rules of request bodies, one case each, as api/openapi.yaml
// states them: member names are exact (the schemas are case-sensitive and
// closed); a member given twice is refused; an integer field takes any JSON
// number whose value is an integer (JSON Schema's integer: 1000, 1000.0,
// 1e3), nothing else; owner counts characters (code points), as maxLength
// does.
func TestDecodeInputRules(t *testing.T) {
	cases := []struct {
		name, body string
		code       string // "" = accepted
		ttl        time.Duration
		owner      string
	}{
		{"exact names", `{"ttl_ms": 1000, "owner": "x"}`, "", time.Second, "x"},
		{"name in upper case", `{"TTL_MS": 1000}`, "unknown_field", 0, ""},
		{"name in mixed case", `{"Owner": "x"}`, "unknown_field", 0, ""},
		{"two cases of one name", `{"Owner": "x", "OWNER": "y"}`, "unknown_field", 0, ""},
		{"duplicate member", `{"owner": "x", "owner": "y"}`, "invalid_json", 0, ""},
		{"duplicate ttl_ms", `{"ttl_ms": 1000, "ttl_ms": 2000}`, "invalid_json", 0, ""},
		{"integral decimal", `{"ttl_ms": 1000.0}`, "", time.Second, ""},
		{"integral exponent", `{"ttl_ms": 1e3}`, "", time.Second, ""},
		{"integral fraction exponent", `{"ttl_ms": 1.5e3}`, "", 1500 * time.Millisecond, ""},
		{"negative exponent, integral", `{"ttl_ms": 150000e-2}`, "", 1500 * time.Millisecond, ""},
		{"fraction", `{"ttl_ms": 1000.5}`, "invalid_ttl_ms", 0, ""},
		{"tiny fraction", `{"ttl_ms": 3600000.0000000000000001}`, "invalid_ttl_ms", 0, ""},
		{"huge exponent", `{"ttl_ms": 1e999999999}`, "invalid_ttl_ms", 0, ""},
		{"tiny exponent", `{"ttl_ms": 1e-999999999}`, "invalid_ttl_ms", 0, ""},
		{"string", `{"ttl_ms": "1000"}`, "invalid_ttl_ms", 0, ""},
		{"wait_ms fraction", `{"wait_ms": 0.5}`, "invalid_wait_ms", 0, ""},
		{"owner of 256 characters, 1024 bytes", `{"owner": "` + strings.Repeat("😀", 256) + `"}`, "", 15 * time.Second, strings.Repeat("😀", 256)},
		{"owner of 257 characters", `{"owner": "` + strings.Repeat("é", 257) + `"}`, "invalid_owner", 0, ""},
		{"owner of 257 ASCII", `{"owner": "` + strings.Repeat("o", 257) + `"}`, "invalid_owner", 0, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var b acquireBody
			err := decodeBytes([]byte(c.body), &b)
			var p acquireParams
			if err == nil {
				p, err = b.params()
			}
			var re *requestError
			switch {
			case c.code == "" && err != nil:
				t.Fatalf("%s: refused with %v, want accepted", c.body, err)
			case c.code != "" && err == nil:
				t.Fatalf("%s: accepted as %+v, want refused with %s", c.body, p, c.code)
			case c.code != "" && (!errors.As(err, &re) || re.code != c.code || re.status != 400):
				t.Fatalf("%s: refused with %v, want 400 %s", c.body, err, c.code)
			}
			if c.code == "" && (p.ttl != c.ttl || p.owner != c.owner) {
				t.Errorf("%s: got ttl %v owner %q, want %v %q", c.body, p.ttl, p.owner, c.ttl, c.owner)
			}
		})
	}
}

// The same rules hold on renew, release and the election bodies, which
// share the decoder.
func TestDecodeInputRulesOtherBodies(t *testing.T) {
	id := `"AAAAAAAAAAAAAAAAAAAAAA"`
	for _, c := range []struct {
		body string
		v    any
		code string
	}{
		{`{"lease_id": ` + id + `, "ttl_ms": 2000.0}`, &renewBody{}, ""},
		{`{"Lease_ID": ` + id + `}`, &renewBody{}, "unknown_field"},
		{`{"lease_id": ` + id + `, "lease_id": ` + id + `}`, &releaseBody{}, "invalid_json"},
		{`{"value": "a", "value": "b"}`, &campaignBody{}, "invalid_json"},
		{`{"Value": "a"}`, &proclaimBody{}, "unknown_field"},
	} {
		err := decodeBytes([]byte(c.body), c.v)
		var re *requestError
		if c.code == "" && err != nil || c.code != "" && (!errors.As(err, &re) || re.code != c.code) {
			t.Errorf("%s into %T: %v, want code %q", c.body, c.v, err, c.code)
		}
	}
}
