package httpapi_test

import (
	"bytes"
	"context"
	"net/http"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lockd/lockd/internal/httpapi"
)

// A long poll costs no goroutine of the API's own while it waits: ending it
// when lockd stops is registered on a context that needs none (a goroutine
// per waiter is 8 KB of stack at least; 10,000 waiters made it ~80 MB of a
// lockd's memory, issue 15).
func TestLongPollStartsNoGoroutine(t *testing.T) {
	s := newSpecServer(t, httpapi.Options{})
	s.want(s.do("POST", "/v1/locks/lp.held/acquire", `{"ttl_ms": 60000}`), 200, "")
	const n = 50
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, "POST", s.url+"/v1/locks/lp.held/acquire", strings.NewReader(`{"wait_ms": 60000}`))
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
	defer func() { cancel(); wg.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := s.do("GET", "/v1/locks/lp.held", "")
		if w, _ := st.json["waiters"].(float64); int(w) == n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiters did not all queue: %s", st.body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var buf bytes.Buffer
	_ = pprof.Lookup("goroutine").WriteTo(&buf, 2)
	if got := strings.Count(buf.String(), "created by context."); got >= n {
		t.Errorf("%d goroutines started by package context with %d long polls waiting, want none per poll", got, n)
	}
}
