package kvstore

import (
	"context"
	"encoding/json"
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

// putPermit is put with a semaphore permit's Lock-Slot; it returns the
// status and the problem's code.
func putPermit(t *testing.T, url, key string, slot int, token uint64, value string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, url, strings.NewReader(value))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Lock-Key", key)
	req.Header.Set("Lock-Slot", strconv.Itoa(slot))
	req.Header.Set("Lock-Token", strconv.FormatUint(token, 10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p struct{ Code string }
	_ = json.NewDecoder(resp.Body).Decode(&p)
	return resp.StatusCode, p.Code
}

// A semaphore of 2 protects the store, each slot writing its own part. A
// holder on slot 0 pauses past its TTL (it never renews); another waiter
// gets slot 0 with a higher token and writes. The paused holder's late
// write is refused with 409, while the holder of slot 1, whose token is
// lower than slot 0's new one, keeps writing: fenced per (key, slot), not
// per key. Real permits from a real lockd.
func TestStalePermitRefusedOtherSlotUnaffected(t *testing.T) {
	srv := lockdtest.Start(t, nil)
	store := httptest.NewServer(NewStore().Handler())
	t.Cleanup(store.Close)
	c, err := client.New(srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	const key = "kv-sem"
	part0, part1 := store.URL+"/kv/part-0", store.URL+"/kv/part-1"

	// A takes a permit over plain HTTP, so that nothing renews it: it
	// "pauses" from here on.
	resp, err := http.Post(srv.URL+"/v1/semaphores/"+key+"/acquire", "application/json",
		strings.NewReader(`{"permits": 2, "ttl_ms": 300, "owner": "A"}`))
	if err != nil {
		t.Fatal(err)
	}
	var a struct {
		LeaseID string `json:"lease_id"`
		Token   uint64 `json:"token"`
		Slot    int    `json:"slot"`
	}
	err = json.NewDecoder(resp.Body).Decode(&a)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("A's permit: %d %v", resp.StatusCode, err)
	}
	// C holds the other slot, renewed.
	cp, err := c.AcquireSemaphore(ctx, key, client.SemaphoreOptions{Permits: 2, TTL: 10 * time.Second, Owner: "C"})
	if err != nil {
		t.Fatalf("C: %v", err)
	}
	defer cp.Release(context.Background())
	if a.Slot == cp.Slot() {
		t.Fatalf("A and C share slot %d", a.Slot)
	}
	if got, _ := putPermit(t, part0, key, a.Slot, a.Token, "from A"); got != http.StatusNoContent {
		t.Fatalf("A's first write: status %d, want 204", got)
	}
	if got, _ := putPermit(t, part1, key, cp.Slot(), cp.Token(), "from C"); got != http.StatusNoContent {
		t.Fatalf("C's first write: status %d, want 204", got)
	}

	// B waits; the only slot that frees is A's, once A's permit runs out.
	bp, err := c.AcquireSemaphore(ctx, key, client.SemaphoreOptions{Permits: 2, TTL: 10 * time.Second, Wait: 20 * time.Second, Owner: "B"})
	if err != nil {
		t.Fatalf("B: %v", err)
	}
	defer bp.Release(context.Background())
	if bp.Slot() != a.Slot || bp.Token() <= cp.Token() {
		t.Fatalf("B has slot %d token %d; want A's slot %d and a token above C's %d", bp.Slot(), bp.Token(), a.Slot, cp.Token())
	}
	if got, _ := putPermit(t, part0, key, bp.Slot(), bp.Token(), "from B"); got != http.StatusNoContent {
		t.Fatalf("B's write: status %d, want 204", got)
	}

	// A wakes up and writes with its old permit: refused, B's value stays.
	if got, code := putPermit(t, part0, key, a.Slot, a.Token, "late from A"); got != http.StatusConflict || code != "stale_lock_token" {
		t.Fatalf("A's late write: %d %q, want 409 stale_lock_token", got, code)
	}
	if got := get(t, part0); got != "from B" {
		t.Fatalf("part-0 holds %q, want %q", got, "from B")
	}
	// C, on the other slot, is unaffected although its token is below B's.
	if got, code := putPermit(t, part1, key, cp.Slot(), cp.Token(), "again from C"); got != http.StatusNoContent {
		t.Fatalf("C's write after B's: %d %q, want 204 (another slot)", got, code)
	}
	resp, err = http.Get(part1)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("Lock-Slot") != strconv.Itoa(cp.Slot()) || resp.Header.Get("Lock-Token") != strconv.FormatUint(cp.Token(), 10) {
		t.Errorf("part-1 shows slot %q token %q, want C's %d and %d", resp.Header.Get("Lock-Slot"), resp.Header.Get("Lock-Token"), cp.Slot(), cp.Token())
	}
	// And A really had lost its permit.
	resp, err = http.Post(srv.URL+"/v1/semaphores/"+key+"/renew", "application/json", strings.NewReader(`{"lease_id": "`+a.LeaseID+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusGone {
		t.Fatalf("A's expired permit renewed: %d, want 410", resp.StatusCode)
	}
}
