package fence

import (
	"errors"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
)

func TestGuardRefusesLowerTokens(t *testing.T) {
	var g Guard
	steps := []struct {
		key     string
		token   uint64
		wantErr bool
	}{
		{"a", 5, false},
		{"a", 5, false}, // the same holder writing again
		{"a", 4, true},
		{"b", 1, false}, // keys are independent
		{"a", 9, false},
		{"a", 5, true},
		{"a", 9, false},
	}
	for i, s := range steps {
		err := g.Check(s.key, s.token)
		if gotErr := err != nil; gotErr != s.wantErr {
			t.Fatalf("step %d: Check(%q, %d) = %v, want error %v", i, s.key, s.token, err, s.wantErr)
		}
		if err != nil {
			var se *StaleError
			if !errors.Is(err, ErrStale) || !errors.As(err, &se) {
				t.Fatalf("step %d: error %v does not match ErrStale/*StaleError", i, err)
			}
			if se.Token != s.token || se.Key != s.key {
				t.Fatalf("step %d: got %+v", i, se)
			}
		}
	}
	if got, ok := g.Highest("a"); !ok || got != 9 {
		t.Fatalf("Highest(a) = %d, %v; want 9, true", got, ok)
	}
	if _, ok := g.Highest("never"); ok {
		t.Fatalf("Highest of an unseen key reported a token")
	}
}

func TestGuardObserve(t *testing.T) {
	var g Guard
	g.Observe("k", 7)
	g.Observe("k", 3) // never lowers
	if err := g.Check("k", 6); !errors.Is(err, ErrStale) {
		t.Fatalf("Check(6) after Observe(7) = %v, want ErrStale", err)
	}
	if err := g.Check("k", 7); err != nil {
		t.Fatalf("Check(7) after Observe(7) = %v, want nil", err)
	}
}

// Writes admitted by Do on one key must reach the resource in non-decreasing
// token order whatever the interleaving; a plain "check then write" without
// Do's turn fails this under -race scheduling.
func TestGuardDoOrdersWrites(t *testing.T) {
	var g Guard
	var (
		mu      sync.Mutex
		written []uint64
	)
	var wg sync.WaitGroup
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 50; j++ {
				tok := rand.Uint64N(1000) + 1
				_ = g.Do("k", tok, func() error {
					mu.Lock()
					written = append(written, tok)
					mu.Unlock()
					return nil
				})
			}
		}()
	}
	wg.Wait()
	if len(written) == 0 {
		t.Fatal("no write admitted")
	}
	for i := 1; i < len(written); i++ {
		if written[i] < written[i-1] {
			t.Fatalf("write %d with token %d landed after token %d", i, written[i], written[i-1])
		}
	}
}

func TestGuardDoRecordsTokenWhenWriteFails(t *testing.T) {
	var g Guard
	boom := errors.New("disk full")
	if err := g.Do("k", 4, func() error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("Do returned %v, want fn's error", err)
	}
	called := false
	err := g.Do("k", 3, func() error { called = true; return nil })
	if !errors.Is(err, ErrStale) || called {
		t.Fatalf("Do(3) after a failed Do(4): err %v, fn called %v; want ErrStale, not called", err, called)
	}
}

func TestMiddleware(t *testing.T) {
	var g Guard
	var hits int
	h := Middleware(&g, http.MethodGet)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits++
		if r.Method != http.MethodGet {
			f, ok := FromContext(r.Context())
			if !ok {
				t.Errorf("fenced request without key/token in its context")
			}
			w.Header().Set("X-Token", strconv.FormatUint(f.Token, 10))
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	cases := []struct {
		name     string
		method   string
		key, tok string
		want     int
		wantCode string
	}{
		{"read passes unfenced", http.MethodGet, "", "", http.StatusNoContent, ""},
		{"missing headers", http.MethodPut, "", "", http.StatusPreconditionRequired, "lock_token_required"},
		{"missing key", http.MethodPut, "", "3", http.StatusPreconditionRequired, "lock_token_required"},
		{"garbage token", http.MethodPut, "k", "abc", http.StatusBadRequest, "invalid_lock_token"},
		{"zero token", http.MethodPut, "k", "0", http.StatusBadRequest, "invalid_lock_token"},
		{"first holder", http.MethodPut, "k", "10", http.StatusNoContent, ""},
		{"newer holder", http.MethodPut, "k", "12", http.StatusNoContent, ""},
		{"stale holder", http.MethodPut, "k", "10", http.StatusConflict, "stale_lock_token"},
		{"other key", http.MethodDelete, "other", "1", http.StatusNoContent, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := httptest.NewRequest(c.method, "/x", nil)
			if c.key != "" {
				req.Header.Set(HeaderKey, c.key)
			}
			if c.tok != "" {
				req.Header.Set(HeaderToken, c.tok)
			}
			before := hits
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != c.want {
				t.Fatalf("status %d, want %d (body %s)", rec.Code, c.want, rec.Body)
			}
			if c.wantCode == "" {
				if hits != before+1 {
					t.Fatalf("handler not called")
				}
				if c.method != http.MethodGet && rec.Header().Get("X-Token") != c.tok {
					t.Fatalf("handler saw token %q, want %q", rec.Header().Get("X-Token"), c.tok)
				}
				return
			}
			if hits != before {
				t.Fatalf("handler called for a refused request")
			}
			if ct := rec.Header().Get("Content-Type"); ct != "application/problem+json" {
				t.Fatalf("Content-Type %q", ct)
			}
			if !strings.Contains(rec.Body.String(), `"code":"`+c.wantCode+`"`) {
				t.Fatalf("body %s lacks code %q", rec.Body, c.wantCode)
			}
		})
	}
}

// A semaphore's permits are fenced per (key, slot): holders of two slots
// write in any order, while a stale holder of one slot is refused. Without
// Lock-Slot the same tokens would refuse the valid holder of the other
// slot, which is why the header exists.
func TestMiddlewareFencesPerSlot(t *testing.T) {
	var g Guard
	h := Middleware(&g)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, _ := FromContext(r.Context())
		w.Header().Set("X-Slot", strconv.Itoa(f.Slot))
		w.Header().Set("X-Slotted", strconv.FormatBool(f.Slotted))
		w.WriteHeader(http.StatusNoContent)
	}))
	put := func(key, slot, tok string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodPut, "/x", nil)
		req.Header.Set(HeaderKey, key)
		req.Header.Set(HeaderToken, tok)
		if slot != "" {
			req.Header.Set(HeaderSlot, slot)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	cases := []struct {
		slot, tok string
		want      int
		code      string
	}{
		{"1", "11", http.StatusNoContent, ""},
		{"0", "10", http.StatusNoContent, ""}, // older token, other slot: a valid holder
		{"0", "12", http.StatusNoContent, ""}, // slot 0 handed on
		{"0", "10", http.StatusConflict, "stale_lock_token"},
		{"1", "11", http.StatusNoContent, ""},
		{"-1", "13", http.StatusBadRequest, "invalid_lock_slot"},
		{"x", "13", http.StatusBadRequest, "invalid_lock_slot"},
	}
	for i, c := range cases {
		rec := put("sem", c.slot, c.tok)
		if rec.Code != c.want || (c.code != "" && !strings.Contains(rec.Body.String(), `"code":"`+c.code+`"`)) {
			t.Fatalf("case %d (slot %s token %s): %d %s, want %d %s", i, c.slot, c.tok, rec.Code, rec.Body, c.want, c.code)
		}
		if c.code == "" && (rec.Header().Get("X-Slot") != c.slot || rec.Header().Get("X-Slotted") != "true") {
			t.Fatalf("case %d: handler saw slot %q slotted %q, want %s", i, rec.Header().Get("X-Slot"), rec.Header().Get("X-Slotted"), c.slot)
		}
	}
	if hi, _ := g.Highest(SlotKey("sem", 0)); hi != 12 {
		t.Errorf("Highest(SlotKey(sem, 0)) = %d, want 12", hi)
	}
	// The lock "sem" (no slot) is another fence.
	if rec := put("sem", "", "1"); rec.Code != http.StatusNoContent {
		t.Errorf("the lock sem after its semaphore's permits: %d, want 204", rec.Code)
	}
}
