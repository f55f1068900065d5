package client_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lockd/lockd/client"
)

// Lost replies, measured end to end through a real TCP proxy that drops the
// first attempt's reply of each acquire: with the Idempotency-Key every
// acquire comes back with its one grant and no orphan is left; without it
// (a client that sends none and retries) every key is blocked for a TTL.
// The two counts are logged for the README.
func TestLostRepliesOrphans(t *testing.T) {
	srv := sharedServer(t)
	proxy := dropReplies(t, srv.Addr)
	ctx := ctxFor(t, 3*time.Minute)
	direct := newClient(t, srv.URL, nil)
	const n, ttl = 20, 30 * time.Second

	orphans := 0
	for i := 0; i < n; i++ {
		key := k(t, fmt.Sprint("c-lost-idem-", i))
		c := newClient(t, srv.URL, &client.Options{RetryBackoff: 10 * time.Millisecond, HTTPClient: firstThrough(proxy.Listen)})
		g, err := c.AcquireLease(ctx, key, client.AcquireOptions{TTL: ttl, Owner: "idem"})
		if err != nil {
			t.Fatalf("keyed acquire %d with its first reply lost: %v", i, err)
		}
		if err := c.ReleaseLease(ctx, key, g.LeaseID); err != nil {
			t.Fatalf("release %d: %v", i, err)
		}
		st, err := direct.Inspect(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if st.Held { // held by a lease the client never saw
			orphans++
		}
	}
	if orphans != 0 {
		t.Errorf("with Idempotency-Key: %d of %d keys held by an orphan after the client released its grant, want 0", orphans, n)
	}

	blocked := 0
	for i := 0; i < n; i++ {
		key := k(t, fmt.Sprint("c-lost-plain-", i))
		hc := firstThrough(proxy.Listen)
		// A client without the header, retrying the way an HTTP client
		// would after a lost reply.
		status := 0
		for attempt := 0; attempt < 2 && status == 0; attempt++ {
			req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+"/v1/locks/"+key+"/acquire", strings.NewReader(`{"ttl_ms": 30000, "owner": "plain"}`))
			req.Header.Set("Content-Type", "application/json")
			resp, err := hc.Do(req)
			if err != nil {
				continue
			}
			resp.Body.Close()
			status = resp.StatusCode
		}
		st, err := direct.Inspect(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if status != http.StatusOK && st.Held {
			blocked++ // nobody knows the lease: the key waits out its TTL
		}
	}
	t.Logf("acquires whose first reply a proxy dropped, %d each: with Idempotency-Key %d orphaned grants; without, %d keys blocked for the whole %v TTL", n, orphans, blocked, ttl)
	if blocked == 0 {
		t.Errorf("without Idempotency-Key no key was blocked: the proxy did not drop the first reply")
	}
}
