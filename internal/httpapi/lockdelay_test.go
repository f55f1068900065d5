package httpapi_test

import (
	"testing"

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
