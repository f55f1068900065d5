package httpapi_test

import (
	"testing"
	"time"

	"github.com/lockd/lockd/backend"
	etcdb "github.com/lockd/lockd/backend/etcd"
	"github.com/lockd/lockd/internal/httpapi"
	"github.com/lockd/lockd/internal/testserver"
)

// nonDelaying is a real backend that keeps no lock-delays (its LockDelayer,
// if any, hidden): lockd must refuse a lock-delay asked of it, not drop it.
type nonDelaying struct {
	backend.Backend
	backend.Elector
	backend.Semaphorer
	backend.RWLocker
}

// A lock-delay outside 0..60000 ms, or not a number, is refused with 400
// invalid_lock_delay_ms on every acquire route (a semaphore's and an
// rwlock's body once named the field by its Go path,
// invalid_acquireBody.lock_delay_ms, a code the contract does not have); one asked of a backend that cannot keep it is
// refused with 501 saying so, while 0 and no field are served.
func TestLockDelayRefusedWhereNotKept(t *testing.T) {
	e := testserver.EtcdCluster(t, 1)
	b := etcdOn(t, e.Endpoints(), etcdb.Options{})
	s := newSpecServerOver(t, e, nonDelaying{b, b, b, b}, httpapi.Options{})
	caps := s.do("GET", "/v1/capabilities", "")
	s.want(caps, 200, "")
	if f, _ := caps.json["features"].(map[string]any); f["lock_delay"] != nil {
		t.Errorf("capabilities lock_delay = %v, want null for a backend that delays nothing", f["lock_delay"])
	}
	routes := []struct{ path, body string }{
		{"/v1/locks/ld.k/acquire", `{"ttl_ms": 5000`},
		{"/v1/semaphores/ld.s/acquire", `{"permits": 2, "ttl_ms": 5000`},
		{"/v1/rwlocks/ld.rw/acquire", `{"mode": "write", "ttl_ms": 5000`},
		{"/v1/elections/ld.e/campaign", `{"ttl_ms": 5000`},
	}
	for _, rt := range routes {
		for _, bad := range []string{`-1`, `60001`, `"5s"`} {
			s.want(s.do("POST", rt.path, rt.body+`, "lock_delay_ms": `+bad+`}`), 400, "invalid_lock_delay_ms")
		}
		s.want(s.do("POST", rt.path, rt.body+`, "lock_delay_ms": 1000}`), 501, "not_supported")
		s.want(s.do("POST", rt.path, rt.body+`, "lock_delay_ms": 0}`), 200, "")
	}
}

// Over a backend that delays, the API's lock-delay answers match the
// contract on every primitive: lockd's default (Options.LockDelay) applies
// to an acquire that sends no lock_delay_ms, a refusal inside the delay is
// 409 lock_held with lock_delay {until, expired_token}, and inspection shows
// delayed_until (a semaphore: delayed[]). An acquire sending 0 gets none.
func TestLockDelayAnswers(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{LockDelay: 1500 * time.Millisecond})
	caps := s.do("GET", "/v1/capabilities", "")
	s.want(caps, 200, "")
	ld, _ := caps.json["features"].(map[string]any)["lock_delay"].(map[string]any)
	if ld == nil || ld["locks"] != true || ld["default_ms"] != float64(1500) {
		t.Fatalf("capabilities lock_delay = %v, want locks delayed and default_ms 1500", caps.json["features"])
	}
	type prim struct {
		name, acquire, extra, inspect string
		delayed                       func(map[string]any) bool
	}
	until := func(j map[string]any) bool { _, ok := j["delayed_until"].(string); return ok }
	prims := []prim{
		{"lock", "/v1/locks/ld.a/acquire", ``, "/v1/locks/ld.a", until},
		{"rwlock", "/v1/rwlocks/ld.a/acquire", `, "mode": "write"`, "/v1/rwlocks/ld.a", until},
		{"election", "/v1/elections/ld.a/campaign", ``, "/v1/elections/ld.a", until},
		{"semaphore", "/v1/semaphores/ld.a/acquire", `, "permits": 1`, "/v1/semaphores/ld.a", func(j map[string]any) bool {
			d, _ := j["delayed"].([]any)
			return len(d) == 1
		}},
	}
	for _, p := range prims {
		if ld[map[string]string{"lock": "locks", "rwlock": "rwlocks", "election": "elections", "semaphore": "semaphores"}[p.name]] != true {
			continue // a primitive this backend does not delay: refused with 501 above
		}
		g := s.do("POST", p.acquire, `{"ttl_ms": 500`+p.extra+`}`) // the default delay
		s.want(g, 200, "")
		time.Sleep(time.Until(parseTime(t, g.json["expires_at"])) + 300*time.Millisecond)
		r := s.do("POST", p.acquire, `{"ttl_ms": 5000`+p.extra+`}`)
		s.want(r, 409, "lock_held")
		d, _ := r.json["lock_delay"].(map[string]any)
		tok := g.json["token"]
		if tok == nil {
			tok = g.json["term"]
		}
		if d == nil || d["expired_token"] != tok {
			t.Errorf("%s: refusal inside the lock-delay = %s, want lock_delay with expired_token %v", p.name, r.body, tok)
		}
		if st := s.do("GET", p.inspect, ""); !p.delayed(st.json) {
			t.Errorf("%s: inspection inside the lock-delay = %s, want the delay shown", p.name, st.body)
		}
	}
	// lock_delay_ms 0 overrides the default: free at expiry.
	g := s.do("POST", "/v1/locks/ld.none/acquire", `{"ttl_ms": 500, "lock_delay_ms": 0}`)
	s.want(g, 200, "")
	time.Sleep(time.Until(parseTime(t, g.json["expires_at"])) + 300*time.Millisecond)
	s.want(s.do("POST", "/v1/locks/ld.none/acquire", `{"ttl_ms": 5000}`), 200, "")
}

func parseTime(t *testing.T, v any) time.Time {
	t.Helper()
	s, _ := v.(string)
	at, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("not a timestamp: %v", v)
	}
	return at
}
