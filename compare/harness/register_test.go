package harness

import (
	"strings"
	"testing"
	"time"
)

func TestRegisterFencing(t *testing.T) {
	now := time.Now()
	later := now.Add(time.Hour)
	r := newRegister(true)
	v, g1 := r.read(1, 10, later, now)
	if ok, _ := r.write(1, g1, 10, v, now); !ok {
		t.Fatalf("first write with token 10 refused")
	}
	v, g2 := r.read(2, 9, later, now)
	if ok, stale := r.write(2, g2, 9, v, now); ok || stale {
		t.Errorf("current holder's write with token 9 after 10: accepted=%v stale=%v, want refused and not stale", ok, stale)
	}
	// A superseded holder writes after its successor has: stale. The
	// fenced register refuses it when the successor's token is higher, and
	// accepts it when it is not.
	for _, tc := range []struct {
		fenced       bool
		succ         uint64
		wantAccepted bool
	}{{true, 10, false}, {true, 8, true}, {false, 10, true}} {
		u := newRegister(tc.fenced)
		_, u1 := u.read(1, 9, later, now)
		v, u2 := u.read(2, tc.succ, later, now)
		u.write(2, u2, tc.succ, v, now)
		if ok, stale := u.write(1, u1, 9, 0, now); ok != tc.wantAccepted || !stale {
			t.Errorf("fenced=%v, successor token %d: superseded holder's late write accepted=%v stale=%v, want accepted=%v and stale",
				tc.fenced, tc.succ, ok, stale, tc.wantAccepted)
		}
		st := u.stats()
		if want := int64(map[bool]int{true: 1}[tc.wantAccepted]); st.StaleAccepted != want || st.StaleAccepted+st.StaleRejected != 1 {
			t.Errorf("fenced=%v, successor token %d: stale accepted/refused = %d/%d, want %d accepted of 1", tc.fenced, tc.succ, st.StaleAccepted, st.StaleRejected, want)
		}
	}
}

// TestRegisterSupersededBeforeSuccessorWrote: a holder superseded by a
// later grant writes before the new holder has. The resource has seen no
// higher token, so no fence can refuse the write: it is counted as
// superseded, not as a stale write accepted with fencing. (Counted as stale
// before, it turned the check red where fencing had nothing to refuse.)
func TestRegisterSupersededBeforeSuccessorWrote(t *testing.T) {
	now := time.Now()
	later := now.Add(time.Hour)
	r := newRegister(true)
	v, old := r.read(1, 5, now.Add(-time.Millisecond), now)
	v2, cur := r.read(2, 6, later, now)
	if ok, stale := r.write(1, old, 5, v, now); !ok || stale {
		t.Fatalf("superseded holder's write before its successor's: accepted=%v stale=%v, want accepted, not stale", ok, stale)
	}
	if ok, stale := r.write(2, cur, 6, v2, now); !ok || stale {
		t.Errorf("new holder's write: accepted=%v stale=%v, want accepted, not stale", ok, stale)
	}
	if st := r.stats(); st.StaleAccepted != 0 || st.StaleRejected != 0 || st.Superseded != 1 {
		t.Errorf("stale accepted/refused/superseded = %d/%d/%d, want 0/0/1", st.StaleAccepted, st.StaleRejected, st.Superseded)
	}
}

func TestRegisterCountsOverlapOnlyWhileBothLeasesLive(t *testing.T) {
	now := time.Now()
	r := newRegister(true)
	r.read(1, 1, now.Add(time.Second), now)
	r.read(2, 2, now.Add(time.Second), now) // both unexpired: a violation
	r.abandon(1)
	r.abandon(2)
	r.read(3, 3, now.Add(-time.Millisecond), now) // 3's lease already ran out
	r.read(4, 4, now.Add(time.Second), now)
	st := r.stats()
	if st.Overlaps != 1 || st.ExpiredOverlaps != 1 {
		t.Errorf("overlaps = %d, expired overlaps = %d; want 1 and 1", st.Overlaps, st.ExpiredOverlaps)
	}
}

// TestCheckerFindsLostUpdate: two critical sections that read the same value
// cannot both be atomic; the checker must say so and show where.
func TestCheckerFindsLostUpdate(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	h := []histOp{
		{Kind: opAcquire, Client: 0, Call: at(0), Return: at(1), Granted: true, Token: 1},
		{Kind: opRMW, Client: 0, Call: at(2), Return: at(10), Token: 1, FRead: 0, URead: 0, FAccepted: true, UAccepted: true},
		{Kind: opAcquire, Client: 1, Call: at(3), Return: at(4), Granted: true, Token: 2},
		{Kind: opRMW, Client: 1, Call: at(5), Return: at(6), Token: 2, FRead: 0, URead: 0, FAccepted: true, UAccepted: true},
	}
	// Then client 0 writes again having read 0: the increments in between
	// are lost, and no atomic order explains what it read.
	h = append(h, histOp{Kind: opRMW, Client: 1, Call: at(11), Return: at(12), Token: 2, FRead: 1, URead: 1, FAccepted: true, UAccepted: true},
		histOp{Kind: opRMW, Client: 0, Call: at(13), Return: at(14), Token: 1, FRead: 0, URead: 0, FAccepted: true, UAccepted: true})
	got := checkHistory(h, false, t0, 5*time.Second)
	if got.Result != "NOT linearizable" {
		t.Fatalf("unfenced check = %q, want NOT linearizable", got.Result)
	}
	if !strings.Contains(got.FirstViolation, "none of these can come next") {
		t.Errorf("first violation not shown:\n%s", got.FirstViolation)
	}
}

func TestCheckerRefusedStaleWriteIsFine(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	// Client 0 pauses across client 1's whole grant; its late write with the
	// older token is refused by the fenced register: that is linearizable.
	h := []histOp{
		{Kind: opAcquire, Client: 0, Call: at(0), Return: at(1), Granted: true, Token: 5},
		{Kind: opRMW, Client: 0, Call: at(2), Return: at(50), Token: 5, FRead: 0, FAccepted: false},
		{Kind: opAcquire, Client: 1, Call: at(20), Return: at(21), Granted: true, Token: 6},
		{Kind: opRMW, Client: 1, Call: at(22), Return: at(23), Token: 6, FRead: 0, FAccepted: true},
	}
	if got := checkHistory(h, true, t0, 5*time.Second); got.Result != "linearizable" {
		t.Errorf("fenced check = %q, want linearizable\n%s", got.Result, got.FirstViolation)
	}
	// A grant with a token not above an earlier one is illegal.
	h = append(h, histOp{Kind: opAcquire, Client: 2, Call: at(60), Return: at(61), Granted: true, Token: 4})
	if got := checkHistory(h, true, t0, 5*time.Second); got.Result != "NOT linearizable" {
		t.Errorf("token going backwards: check = %q, want NOT linearizable", got.Result)
	}
}
