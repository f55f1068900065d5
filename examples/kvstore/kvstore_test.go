package kvstore

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lockd/lockd/client"
	"github.com/lockd/lockd/internal/lockdtest"
)

func TestMain(m *testing.M) { lockdtest.Main(m) }

func put(t *testing.T, url, key string, token uint64, value string) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, url, strings.NewReader(value))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Lock-Key", key)
	req.Header.Set("Lock-Token", strconv.FormatUint(token, 10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// A holder that stalls past its TTL (it stops renewing, as a paused process
// would) must have its late write refused once a newer holder has written —
// with real leases from a real lockd.
func TestPausedExpiredHolderLateWriteRefused(t *testing.T) {
	srv := lockdtest.Start(t, nil)
	store := httptest.NewServer(NewStore().Handler())
	t.Cleanup(store.Close)
	c, err := client.New(srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	const key = "kv-greeting"
	url := store.URL + "/kv/greeting"

	// A takes the lock, writes, then "pauses": no renewal from here on.
	a, err := c.AcquireLease(ctx, key, client.AcquireOptions{TTL: 300 * time.Millisecond, Owner: "A"})
	if err != nil {
		t.Fatal(err)
	}
	if got := put(t, url, key, a.Token, "from A"); got != http.StatusNoContent {
		t.Fatalf("A's first write: status %d, want 204", got)
	}

	// B queues and gets the lock once A's lease has run out.
	b, err := c.AcquireLease(ctx, key, client.AcquireOptions{TTL: 10 * time.Second, Wait: 10 * time.Second, Owner: "B"})
	if err != nil {
		t.Fatalf("B: %v", err)
	}
	if b.Token <= a.Token {
		t.Fatalf("B's token %d not above A's %d", b.Token, a.Token)
	}
	if got := put(t, url, key, b.Token, "from B"); got != http.StatusNoContent {
		t.Fatalf("B's write: status %d, want 204", got)
	}

	// A wakes up and writes with its old token: refused, B's value stays.
	if got := put(t, url, key, a.Token, "late from A"); got != http.StatusConflict {
		t.Fatalf("A's late write: status %d, want 409", got)
	}
	if got := get(t, url); got != "from B" {
		t.Fatalf("value %q, want %q", got, "from B")
	}
	// And A really had lost the lock: its lease cannot be renewed.
	if _, err := c.RenewLease(ctx, key, a.LeaseID, 0); err == nil {
		t.Fatal("A's expired lease renewed")
	}
	if err := c.ReleaseLease(ctx, key, b.LeaseID); err != nil {
		t.Fatal(err)
	}
}

func TestWriteWithoutTokenRefused(t *testing.T) {
	store := httptest.NewServer(NewStore().Handler())
	t.Cleanup(store.Close)
	req, _ := http.NewRequest(http.MethodPut, store.URL+"/kv/x", strings.NewReader("v"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusPreconditionRequired {
		t.Fatalf("unfenced write: status %d, want 428", resp.StatusCode)
	}
}
