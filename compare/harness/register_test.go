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
	g1 := r.granted()
	v := r.read(1, later, now)
	if ok, _ := r.write(1, g1, 10, v, now); !ok {
		t.Fatalf("first write with token 10 refused")
	}
	g2 := r.granted()
	v = r.read(2, later, now)
	if ok, stale := r.write(2, g2, 9, v, now); ok || stale {
		t.Errorf("current holder's write with token 9 after 10: accepted=%v stale=%v, want refused and not stale", ok, stale)
	}
	u := newRegister(false)
	u1 := u.granted()
	u.read(1, later, now)
	u2 := u.granted()
	u.write(2, u2, 10, u.read(2, later, now), now)
	if ok, stale := u.write(1, u1, 9, 0, now); !ok || !stale {
		t.Errorf("unfenced write by a superseded holder: accepted=%v stale=%v, want accepted and stale", ok, stale)
	}
	if got := u.stats().StaleAccepted; got != 1 {
		t.Errorf("unfenced stale accepted = %d, want 1", got)
	}
}

// TestRegisterStaleIsSuperseded: a holder superseded by a later grant writes
// before the new holder has: fencing cannot tell, and the register says so
// (with "stale" meaning "token below the highest", this could never count).
func TestRegisterStaleIsSuperseded(t *testing.T) {
	now := time.Now()
	later := now.Add(time.Hour)
	r := newRegister(true)
	old := r.granted()
	v := r.read(1, now.Add(-time.Millisecond), now)
	cur := r.granted()
	if ok, stale := r.write(1, old, 5, v, now); !ok || !stale {
		t.Fatalf("superseded holder's first write: accepted=%v stale=%v, want accepted and stale", ok, stale)
	}
	if ok, stale := r.write(2, cur, 6, r.read(2, later, now), now); !ok || stale {
		t.Errorf("new holder's write: accepted=%v stale=%v, want accepted, not stale", ok, stale)
	}
	if st := r.stats(); st.StaleAccepted != 1 || st.StaleRejected != 0 {
		t.Errorf("stale accepted/refused = %d/%d, want 1/0", st.StaleAccepted, st.StaleRejected)
	}
}

func TestRegisterCountsOverlapOnlyWhileBothLeasesLive(t *testing.T) {
	now := time.Now()
	r := newRegister(true)
	r.read(1, now.Add(time.Second), now)
	r.read(2, now.Add(time.Second), now) // both unexpired: a violation
	r.abandon(1)
	r.abandon(2)
	r.read(3, now.Add(-time.Millisecond), now) // 3's lease already ran out
	r.read(4, now.Add(time.Second), now)
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
