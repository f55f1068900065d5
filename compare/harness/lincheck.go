package harness

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// The history checker. The model is a fenced mutex guarding a counter:
//   - a grant is legal only if its token exceeds every token granted before
//     it (a timed-out or failed acquire is an unknown output: it may or may
//     not have granted, so it constrains nothing);
//   - a critical section (read → think → write) must behave as one atomic
//     read-modify-write of the counter: it reads what the last accepted write
//     left. In fenced mode a write is accepted exactly when its token is at
//     least the highest accepted so far, and a refused write changes nothing
//     (so what it read does not matter).
//
// Two holders whose critical sections overlap make some section read a value
// that no atomic order explains; the checker then reports the history not
// linearizable and shows where the longest explainable prefix stops.

type lockState struct {
	MaxGrant uint64
	Value    int64
	Highest  uint64
}

type opIn struct {
	Kind   opKind
	Client int
	Token  uint64
}

type opOut struct {
	Granted, Unknown bool
	Token            uint64
	Read             int64
	Accepted         bool
}

func lockModel(fenced bool) porcupine.Model { return lockModelFrom(fenced, lockState{}) }

// lockModelFrom is the model started in state init (where a segment of the
// history starts, see checkHistory).
func lockModelFrom(fenced bool, init lockState) porcupine.Model {
	return porcupine.Model{
		Init: func() any { return init },
		Step: func(state, input, output any) (bool, any) {
			s, in, out := state.(lockState), input.(opIn), output.(opOut)
			switch in.Kind {
			case opAcquire:
				if out.Unknown || !out.Granted {
					return true, s
				}
				if out.Token <= s.MaxGrant {
					return false, s
				}
				s.MaxGrant = out.Token
				return true, s
			default:
				if !fenced {
					if out.Read != s.Value {
						return false, s
					}
					s.Value = out.Read + 1
					if in.Token > s.Highest {
						s.Highest = in.Token
					}
					return true, s
				}
				if !out.Accepted {
					return in.Token < s.Highest, s
				}
				if in.Token < s.Highest || out.Read != s.Value {
					return false, s
				}
				s.Value, s.Highest = out.Read+1, in.Token
				return true, s
			}
		},
		DescribeOperation: func(input, output any) string { return describeOp(input.(opIn), output.(opOut)) },
		DescribeState: func(state any) string {
			s := state.(lockState)
			return fmt.Sprintf("max token %d, value %d, highest written %d", s.MaxGrant, s.Value, s.Highest)
		},
	}
}

func describeOp(in opIn, out opOut) string {
	if in.Kind == opAcquire {
		switch {
		case out.Unknown:
			return fmt.Sprintf("client %d acquire → unknown (error)", in.Client)
		case !out.Granted:
			return fmt.Sprintf("client %d acquire → not granted", in.Client)
		}
		return fmt.Sprintf("client %d acquire → token %d", in.Client, out.Token)
	}
	verdict := "accepted"
	if !out.Accepted {
		verdict = "refused"
	}
	return fmt.Sprintf("client %d read %d, write %d with token %d → %s", in.Client, out.Read, out.Read+1, in.Token, verdict)
}

// checkResult is what the report shows of one check.
type checkResult struct {
	Result string `json:"result"` // "linearizable", "NOT linearizable", "unknown (checker timed out)"
	Ops    int    `json:"ops"`
	// FirstViolation shows, when the history is not linearizable, the end of
	// the longest prefix the model explains and the operations that cannot
	// follow it.
	FirstViolation string `json:"first_violation,omitempty"`
}

// checkHistory checks h against the model within timeout.
//
// The model's state is two independent objects: the grants touch only the
// highest token granted, the critical sections only the counter and the
// highest token written. A history is linearizable exactly when each
// object's part of it is (linearizability is local), so the two are checked
// apart:
//   - the grants, exactly and in n log n: they are linearizable when no two
//     carry the same token and a grant that returned before another was
//     called carries the lower token (then ordering by token is a legal
//     order that respects real time, and any legal order is that one);
//   - the critical sections with porcupine, in segments cut where none is
//     in flight: everything before such a point is linearized before
//     everything after it, and the state there does not depend on the order
//     found (the counter advanced once per accepted write, the highest
//     token written is the largest accepted), so each segment is checked
//     from the state the previous one left. A 5-minute soak's history is
//     tens of thousands of operations, one search over all of which ran out
//     its time limit; the segments are a few hundred operations each.
//
// A segment the search does not finish within what is left of timeout
// leaves the verdict unknown, never linearizable.
func checkHistory(h []histOp, fenced bool, start time.Time, timeout time.Duration) checkResult {
	deadline := time.Now().Add(timeout)
	var grants, sections []porcupine.Operation
	for _, op := range h {
		if op.Kind == opAcquire && (op.Unknown || !op.Granted) {
			// Always legal and changes nothing in the model: dropping it
			// keeps the search small without changing the verdict.
			continue
		}
		in := opIn{Kind: op.Kind, Client: op.Client, Token: op.Token}
		out := opOut{Granted: op.Granted, Unknown: op.Unknown, Token: op.Token}
		if op.Kind == opRMW {
			out = opOut{Read: op.URead, Accepted: op.UAccepted}
			if fenced {
				out = opOut{Read: op.FRead, Accepted: op.FAccepted}
			}
		}
		o := porcupine.Operation{ClientId: op.Client, Input: in, Output: out,
			Call: op.Call.Sub(start).Nanoseconds(), Return: op.Return.Sub(start).Nanoseconds()}
		if op.Kind == opAcquire {
			grants = append(grants, o)
		} else {
			sections = append(sections, o)
		}
	}
	cr := checkResult{Ops: len(grants) + len(sections)}
	if v := grantOrderViolation(grants); v != "" {
		cr.Result, cr.FirstViolation = "NOT linearizable", v
		return cr
	}
	state := lockState{}
	for _, seg := range quiescentSegments(sections, segmentOps) {
		left := time.Until(deadline)
		if left <= 0 {
			cr.Result = "unknown (checker timed out)"
			return cr
		}
		model := lockModelFrom(fenced, state)
		res, info := porcupine.CheckOperationsVerbose(model, seg, left)
		switch res {
		case porcupine.Ok:
			next, ok := finalState(model, seg, info)
			if !ok {
				cr.Result = "unknown (checker gave no linearization)"
				return cr
			}
			state = next
		case porcupine.Illegal:
			cr.Result = "NOT linearizable"
			cr.FirstViolation = firstViolation(model, seg, info)
			return cr
		default:
			cr.Result = "unknown (checker timed out)"
			return cr
		}
	}
	cr.Result = "linearizable"
	return cr
}

// segmentOps is the size from which a segment of critical sections ends at
// the next point where none is in flight.
const segmentOps = 256

// quiescentSegments splits ops into runs of at least minOps operations (the
// last may be shorter) such that every operation of a run returned before
// any of the next run was called. Equal times count as overlapping, as
// porcupine orders a call before a return at the same instant.
func quiescentSegments(ops []porcupine.Operation, minOps int) [][]porcupine.Operation {
	ops = slices.Clone(ops)
	sort.SliceStable(ops, func(i, j int) bool { return ops[i].Call < ops[j].Call })
	var segs [][]porcupine.Operation
	from := 0
	var lastReturn int64
	for i, o := range ops {
		if i-from >= minOps && o.Call > lastReturn {
			segs = append(segs, ops[from:i])
			from = i
		}
		lastReturn = max(lastReturn, o.Return)
	}
	if from < len(ops) {
		segs = append(segs, ops[from:])
	}
	return segs
}

// finalState is the state the model is in after the whole linearization of
// an Ok segment.
func finalState(model porcupine.Model, seg []porcupine.Operation, info porcupine.LinearizationInfo) (lockState, bool) {
	var full []porcupine.Operation
	for _, part := range info.PartialLinearizationsOperations() {
		for _, lin := range part {
			if len(lin) == len(seg) {
				full = lin
			}
		}
	}
	if full == nil {
		return lockState{}, false
	}
	state := model.Init()
	for _, o := range full {
		ok, next := model.Step(state, o.Input, o.Output)
		if !ok {
			return lockState{}, false
		}
		state = next
	}
	return state.(lockState), true
}

// grantOrderViolation checks the grants on their own (see checkHistory):
// "" when they are linearizable, otherwise the pair that is not.
func grantOrderViolation(grants []porcupine.Operation) string {
	tok := func(o porcupine.Operation) uint64 { return o.Output.(opOut).Token }
	desc := func(o porcupine.Operation) string {
		return fmt.Sprintf("[%s → %s] %s", ms(o.Call), ms(o.Return), describeOp(o.Input.(opIn), o.Output.(opOut)))
	}
	byCall := slices.Clone(grants)
	sort.SliceStable(byCall, func(i, j int) bool { return byCall[i].Call < byCall[j].Call })
	byReturn := slices.Clone(grants)
	sort.SliceStable(byReturn, func(i, j int) bool { return byReturn[i].Return < byReturn[j].Return })
	seen := map[uint64]porcupine.Operation{}
	var top *porcupine.Operation // the highest token among the grants returned so far
	r := 0
	for _, o := range byCall {
		for r < len(byReturn) && byReturn[r].Return < o.Call {
			if top == nil || tok(byReturn[r]) > tok(*top) {
				top = &byReturn[r]
			}
			r++
		}
		if tok(o) == 0 {
			return "a grant carries token 0, not above the initial 0:\n  " + desc(o) + "\n"
		}
		if top != nil && tok(o) <= tok(*top) {
			return fmt.Sprintf("a grant carries a token not above one granted before it was asked for:\n  %s\nthen\n  %s\n", desc(*top), desc(o))
		}
		if twin, ok := seen[tok(o)]; ok {
			return fmt.Sprintf("two grants carry the same token:\n  %s\n  %s\n", desc(twin), desc(o))
		}
		seen[tok(o)] = o
	}
	return ""
}

// firstViolation prints the tail of the longest explainable prefix and the
// earliest operations that could not be placed after it.
func firstViolation(model porcupine.Model, ops []porcupine.Operation, info porcupine.LinearizationInfo) string {
	var longest []porcupine.Operation
	for _, part := range info.PartialLinearizationsOperations() {
		for _, lin := range part {
			if len(lin) > len(longest) {
				longest = lin
			}
		}
	}
	placed := map[string]bool{}
	key := func(o porcupine.Operation) string { return fmt.Sprintf("%d/%d/%d", o.ClientId, o.Call, o.Return) }
	for _, o := range longest {
		placed[key(o)] = true
	}
	var b strings.Builder
	state := model.Init()
	for _, o := range longest {
		_, state = model.Step(state, o.Input, o.Output)
	}
	from := max(0, len(longest)-6)
	fmt.Fprintf(&b, "explained prefix: %d operations; its last ones:\n", len(longest))
	for _, o := range longest[from:] {
		fmt.Fprintf(&b, "  [%s → %s] %s\n", ms(o.Call), ms(o.Return), model.DescribeOperation(o.Input, o.Output))
	}
	fmt.Fprintf(&b, "state then: %s\nnone of these can come next:\n", model.DescribeState(state))
	var rest []porcupine.Operation
	for _, o := range ops {
		if !placed[key(o)] {
			rest = append(rest, o)
		}
	}
	sort.Slice(rest, func(i, j int) bool { return rest[i].Call < rest[j].Call })
	for i, o := range rest {
		if i == 4 {
			break
		}
		fmt.Fprintf(&b, "  [%s → %s] %s\n", ms(o.Call), ms(o.Return), model.DescribeOperation(o.Input, o.Output))
	}
	return b.String()
}

func ms(ns int64) string {
	if ns >= 1<<62 {
		return "never"
	}
	return fmt.Sprintf("%.3f ms", float64(ns)/1e6)
}

func describeOverlap(client, other int, now, deadline, otherDeadline time.Time) string {
	return fmt.Sprintf("client %d entered the critical section while client %d was inside; both leases unexpired (%s and %s left)",
		client, other, deadline.Sub(now).Round(time.Millisecond), otherDeadline.Sub(now).Round(time.Millisecond))
}
