package httpapi_test

import (
	"encoding/json"
	"net/http/httptest"
	"testing"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/httpapi"
)

// Capabilities name what the backend does, read off the backend itself: a
// backend that hides a feature shows it null and answers 501 on its routes.
func TestCapabilities(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{})
	r := s.do("GET", "/v1/capabilities", "")
	s.want(r, 200, "")
	f, _ := r.json["features"].(map[string]any)
	if r.json["backend"] != "etcd" || f["idempotency"] == nil || f["locks"].(map[string]any)["fifo"] != true {
		t.Errorf("etcd capabilities = %s, want backend etcd, idempotency {}, FIFO locks", r.body)
	}
	if e, _ := f["elections"].(map[string]any); e["observe"] != "watch" {
		t.Errorf("etcd capabilities = %s, want elections observed by watch", r.body)
	}

	plain := struct{ backend.Backend }{etcdBackend(t)} // hides every optional interface
	ts := httptest.NewServer(httpapi.New(plain, httpapi.Options{Backend: "plain"}))
	t.Cleanup(ts.Close)
	resp, err := ts.Client().Get(ts.URL + "/v1/capabilities")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Features map[string]json.RawMessage `json:"features"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&got)
	resp.Body.Close()
	for _, name := range []string{"idempotency", "elections"} {
		if string(got.Features[name]) != "null" {
			t.Errorf("a backend without %s shows %s = %s, want null", name, name, got.Features[name])
		}
	}
	// A backend that says why it leaves a feature out shows the reason.
	why := reasoned{plain, map[string]string{"elections": "no log to observe"}}
	ts2 := httptest.NewServer(httpapi.New(why, httpapi.Options{Backend: "reasoned"}))
	t.Cleanup(ts2.Close)
	resp, err = ts2.Client().Get(ts2.URL + "/v1/capabilities")
	if err != nil {
		t.Fatal(err)
	}
	var gotWhy struct {
		Features    map[string]json.RawMessage `json:"features"`
		Unsupported map[string]string          `json:"unsupported"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&gotWhy)
	resp.Body.Close()
	if string(gotWhy.Features["elections"]) != "null" || gotWhy.Unsupported["elections"] != "no log to observe" {
		t.Errorf("capabilities of a backend that says why = elections %s, unsupported %v; want null and the reason", gotWhy.Features["elections"], gotWhy.Unsupported)
	}

	for _, path := range []string{"/v1/elections/e1/campaign", "/v1/elections/e1/proclaim", "/v1/elections/e1/renew", "/v1/elections/e1/resign"} {
		resp, err := ts.Client().Post(ts.URL+path, "application/json", nil)
		if err != nil {
			t.Fatal(err)
		}
		var p struct{ Code string }
		_ = json.NewDecoder(resp.Body).Decode(&p)
		resp.Body.Close()
		if resp.StatusCode != 501 || p.Code != "not_supported" {
			t.Errorf("POST %s without elections: %d %q, want 501 not_supported", path, resp.StatusCode, p.Code)
		}
	}
	for _, path := range []string{"/v1/elections/e1", "/v1/elections/e1/observe"} {
		resp, err := ts.Client().Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 501 {
			t.Errorf("GET %s without elections: %d, want 501", path, resp.StatusCode)
		}
	}
}

// reasoned is a real backend that declares features unsupported.
type reasoned struct {
	backend.Backend
	why map[string]string
}

func (r reasoned) Unsupported() map[string]string { return r.why }

// The names backends key their Unsupported reasons by are the names the
// capabilities show their features under.
func TestFeatureNamesAreCapabilityFields(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{})
	r := s.do("GET", "/v1/capabilities", "")
	s.want(r, 200, "")
	f, _ := r.json["features"].(map[string]any)
	for _, name := range []string{backend.FeatureElections, backend.FeatureEvents, backend.FeatureSessions, backend.FeatureSemaphores} {
		if _, ok := f[name]; !ok {
			t.Errorf("backend.Feature %q is not a feature in %s", name, r.body)
		}
	}
}
