package httpapi_test

import (
	"net/http"
	"testing"

	"github.com/lockd/lockd/internal/httpapi"
)

// Keys arrive percent-encoded from generated clients (openapi-fetch) and
// Python's urllib.parse.quote: a key valid once decoded works on every route,
// under its decoded name; one that decodes to a '/' is still refused.
func TestPercentEncodedKeys(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{})
	r := s.do("POST", "/v1/locks/reports%3Anightly/acquire", `{"ttl_ms": 10000, "owner": "enc"}`)
	s.want(r, 200, "")
	if r.json["key"] != "reports:nightly" {
		t.Errorf("grant key %v, want the decoded reports:nightly", r.json["key"])
	}
	lease, _ := r.json["lease_id"].(string)
	st := s.do("GET", "/v1/locks/reports:nightly", "")
	if st.json["held"] != true || st.json["owner"] != "enc" {
		t.Errorf("the decoded key is not the one held: %s", st.body)
	}
	s.want(s.do("GET", "/v1/locks/t%73b", ""), 200, "")
	s.want(s.do("POST", "/v1/locks/reports%3anightly/renew", `{"lease_id": "`+lease+`"}`), 200, "")
	s.want(s.do("POST", "/v1/locks/reports%3Anightly/release", `{"lease_id": "`+lease+`"}`), 204, "")
	for _, bad := range []string{"a%2Fb", "a%2fb", "%2E%2E", "k%00"} {
		s.want(s.do("POST", "/v1/locks/"+bad+"/acquire", `{}`), 400, "invalid_key")
	}
	// Election names follow the same rule.
	c := s.do("POST", "/v1/elections/sched%3Aeu/campaign", `{"ttl_ms": 10000, "owner": "enc"}`)
	s.want(c, 200, "")
	if c.json["name"] != "sched:eu" {
		t.Errorf("campaign name %v, want the decoded sched:eu", c.json["name"])
	}
	s.want(s.do("GET", "/v1/elections/sched:eu", ""), 200, "")
	s.want(s.do("POST", "/v1/elections/a%2Fb/campaign", `{}`), 400, "invalid_key")
}

// HEAD /healthz and /readyz answer like GET, without a body.
func TestHeadProbes(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{})
	for _, p := range []string{"/healthz", "/readyz"} {
		resp, err := http.Head(s.url + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("HEAD %s: %d, want 200", p, resp.StatusCode)
		}
	}
}
