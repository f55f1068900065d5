package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/lockd/lockd/backend"
	etcdb "github.com/lockd/lockd/backend/etcd"
	"github.com/lockd/lockd/internal/httpapi"
	"github.com/lockd/lockd/internal/testserver"
)

// Any request, from any caller, through the whole handler over a real
// store: never a 500, every refusal a complete problem+json, and the locks
// two tenants hold stay held with their tokens whatever is sent.
func FuzzHandler(f *testing.F) {
	seeds := []struct {
		who          uint8
		method, path string
		body         string
	}{
		{0, "POST", "a:held/acquire", `{}`},
		{1, "POST", "a:held/release", `{"lease_id": "AAAAAAAAAAAAAAAAAAAAAA"}`},
		{1, "POST", "b:held/renew", `{"lease_id": "AAAAAAAAAAAAAAAAAAAAAA", "ttl_ms": 100}`},
		{2, "POST", "a:new/acquire", `{"ttl_ms": 100, "wait_ms": 50, "owner": "fuzz"}`},
		{3, "GET", "?prefix=a:&limit=2", ``},
		{1, "GET", "a:held", ``},
		{1, "DELETE", "a:held", ``},
		{0, "POST", "a%2Fb/acquire", `{"ttl_ms": 1e400}`},
		{3, "POST", "b:held/release", `{"lease_id": "` + strings.Repeat("A", 200) + `"}`},
	}
	for _, s := range seeds {
		f.Add(s.who, s.method, s.path, []byte(s.body))
	}

	b := etcdOn(f, testserver.EtcdCluster(f, 1).Endpoints(), etcdb.Options{OpTimeout: 5 * time.Second})
	api := httpapi.New(b, httpapi.Options{Auth: tokensFile(f, `{"tokens": [
	  {"name": "tenant-a", "token": "`+tokA+`", "prefixes": ["a:"], "rights": ["lock", "read"], "max_leases": 50},
	  {"name": "reader-a", "token": "`+tokReader+`", "prefixes": ["a:"], "rights": ["read"]},
	  {"name": "admin", "token": "`+tokAdmin+`", "rights": ["admin"]}
	]}`), Limits: httpapi.Limits{MaxWaitersPerKey: 2, MaxWaiters: 4}})
	ctx := context.Background()
	held := map[string]backend.Grant{}
	for _, k := range []string{"a:held", "b:held"} {
		g, err := b.Acquire(ctx, backend.AcquireRequest{Key: k, Owner: "holder", TTL: time.Hour})
		if err != nil {
			f.Fatal(err)
		}
		held[k] = g
	}
	tokens := []string{"", tokA, tokReader, tokAdmin, "not-a-token"}
	methods := []string{"GET", "POST", "PUT", "DELETE", "HEAD"}

	f.Fuzz(func(t *testing.T, who uint8, method, path string, body []byte) {
		if !contains(methods, method) {
			method = methods[int(who)%len(methods)]
		}
		req, err := http.NewRequest(method, "http://lockd/v1/locks/"+path, bytes.NewReader(body))
		if err != nil {
			return // not a request a client can send
		}
		if tok := tokens[int(who)%len(tokens)]; tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		rctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		rec := httptest.NewRecorder()
		api.ServeHTTP(rec, req.WithContext(rctx))
		if rctx.Err() == nil || rec.Body.Len() > 0 {
			if rec.Code >= 500 && rec.Code != http.StatusServiceUnavailable {
				t.Fatalf("%s %s %q → %d %s", method, path, body, rec.Code, rec.Body)
			}
			if rec.Code >= 400 && method != "HEAD" {
				var p struct {
					Type, Title, Detail, Code string
					Status                    int
				}
				if rec.Header().Get("Content-Type") != "application/problem+json" || json.Unmarshal(rec.Body.Bytes(), &p) != nil ||
					p.Status != rec.Code || p.Code == "" || p.Type == "" || p.Title == "" || p.Detail == "" {
					t.Fatalf("%s %s %q → %d %q %s: not a complete problem", method, path, body, rec.Code, rec.Header().Get("Content-Type"), rec.Body)
				}
			}
		}
		for k, g := range held {
			st, err := b.Inspect(ctx, k)
			if err != nil {
				t.Fatal(err)
			}
			if !st.Held || st.Holder == nil || st.Holder.Token != g.Token {
				t.Fatalf("after %s %s %q as %d: %s is %+v, want held with token %d", method, path, body, who, k, st, g.Token)
			}
		}
	})
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
