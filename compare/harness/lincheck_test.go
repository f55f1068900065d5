package harness

import (
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// soakLikeHistory is what a long soak records: clients that wait for the
// lock in turn, so that every moment some granted acquire is in flight,
// each grant followed by its holder's short critical section; grants
// cycles in all.
func soakLikeHistory(t0 time.Time, clients, grants int) []histOp {
	at := func(us int64) time.Time { return t0.Add(time.Duration(us) * time.Microsecond) }
	asked := make([]int64, clients) // when each client's current acquire was sent
	var h []histOp
	now := int64(0)
	for g := 0; g < grants; g++ {
		c := g % clients
		tok := uint64(g + 1)
		h = append(h, histOp{Kind: opAcquire, Client: c, Call: at(asked[c]), Return: at(now + 100), Granted: true, Token: tok})
		h = append(h, histOp{Kind: opRMW, Client: c, Call: at(now + 150), Return: at(now + 900), Token: tok,
			FRead: int64(g), URead: int64(g), FAccepted: true, UAccepted: true})
		// The holder releases and asks again at once; the next client
		// in line, waiting since its own last release, is granted.
		now += 1000
		asked[c] = now + 10
	}
	return h
}

// A soak-length history (the committed full run's Redlock soak had 50,630
// operations; porcupine over all of them ran out its 60 s limit twice)
// gets a real verdict within the limit, and a fault deep in it still turns
// it red.
func TestCheckerLongHistoryGetsAVerdict(t *testing.T) {
	t0 := time.Now()
	const grants = 30000
	limit := 60 * time.Second
	h := soakLikeHistory(t0, 5, grants)
	for _, fenced := range []bool{true, false} {
		if got := checkHistory(h, fenced, t0, limit); got.Result != "linearizable" || got.Ops != 2*grants {
			t.Fatalf("fenced=%v: %d-op history: check = %q over %d ops, want linearizable over %d\n%s", fenced, 2*grants, got.Result, got.Ops, 2*grants, got.FirstViolation)
		}
	}

	// A lost update near the end: one critical section reads what the one
	// before it read.
	lost := soakLikeHistory(t0, 5, grants)
	i := 2*grants - 101 // an RMW
	lost[i].FRead, lost[i].URead = lost[i].FRead-1, lost[i].URead-1
	if lost[i].Kind != opRMW {
		t.Fatalf("op %d is not a critical section", i)
	}
	for _, fenced := range []bool{true, false} {
		got := checkHistory(lost, fenced, t0, limit)
		if got.Result != "NOT linearizable" || !strings.Contains(got.FirstViolation, "none of these can come next") {
			t.Errorf("fenced=%v: lost update at op %d: check = %q, want NOT linearizable with the place shown\n%s", fenced, i, got.Result, got.FirstViolation)
		}
	}

	// A grant near the end whose token is below one granted before it was
	// asked for.
	back := soakLikeHistory(t0, 5, grants)
	j := 2*grants - 200 // an acquire
	if back[j].Kind != opAcquire {
		t.Fatalf("op %d is not an acquire", j)
	}
	back[j].Token = back[j-20].Token
	if got := checkHistory(back, true, t0, limit); got.Result != "NOT linearizable" || !strings.Contains(got.FirstViolation, "not above") {
		t.Errorf("token going backwards at op %d: check = %q, want NOT linearizable, the two grants shown\n%s", j, got.Result, got.FirstViolation)
	}
}

// An unfinished search stays unknown, never linearizable.
func TestCheckerOutOfTimeIsUnknown(t *testing.T) {
	t0 := time.Now()
	h := soakLikeHistory(t0, 5, 2000)
	if got := checkHistory(h, true, t0, time.Nanosecond); !strings.HasPrefix(got.Result, "unknown") {
		t.Errorf("check with no time = %q, want unknown", got.Result)
	}
}

// Two grants with the same token cannot both be above every earlier one,
// even when they overlap in time.
func TestCheckerTwinTokens(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	h := []histOp{
		{Kind: opAcquire, Client: 0, Call: at(0), Return: at(5), Granted: true, Token: 3},
		{Kind: opAcquire, Client: 1, Call: at(1), Return: at(6), Granted: true, Token: 3},
	}
	if got := checkHistory(h, true, t0, 5*time.Second); got.Result != "NOT linearizable" || !strings.Contains(got.FirstViolation, "same token") {
		t.Errorf("twin tokens: check = %q, want NOT linearizable\n%s", got.Result, got.FirstViolation)
	}
}

func TestQuiescentSegmentsCutOnlyWhereNothingIsInFlight(t *testing.T) {
	var ops []porcupine.Operation
	for k := int64(0); k < 3000; k++ {
		ops = append(ops, porcupine.Operation{Call: 10 * k, Return: 10*k + 5})
	}
	// One long operation across what would be cuts; one that returns at the
	// instant the next is called (overlapping, as porcupine sees it).
	ops[600].Return = ops[1100].Return
	ops[1500].Return = ops[1501].Call
	segs := quiescentSegments(ops, 256)
	var n int
	for k, seg := range segs {
		n += len(seg)
		if k == 0 {
			continue
		}
		prevEnd := int64(0)
		for _, o := range segs[k-1] {
			prevEnd = max(prevEnd, o.Return)
		}
		for _, o := range seg {
			if o.Call <= prevEnd {
				t.Fatalf("segment %d holds an operation called at %d, not after segment %d's last return %d", k, o.Call, k-1, prevEnd)
			}
		}
	}
	if n != len(ops) || len(segs) < 5 {
		t.Fatalf("%d segments holding %d of %d operations; want at least 5 holding all", len(segs), n, len(ops))
	}
}
