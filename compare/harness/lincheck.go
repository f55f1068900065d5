package harness

import (
	"fmt"
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

func lockModel(fenced bool) porcupine.Model {
	return porcupine.Model{
		Init: func() any { return lockState{} },
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

func checkHistory(h []histOp, fenced bool, start time.Time, timeout time.Duration) checkResult {
	ops := make([]porcupine.Operation, 0, len(h))
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
		ret := op.Return.Sub(start).Nanoseconds()
		ops = append(ops, porcupine.Operation{ClientId: op.Client, Input: in, Output: out,
			Call: op.Call.Sub(start).Nanoseconds(), Return: ret})
	}
	model := lockModel(fenced)
	res, info := porcupine.CheckOperationsVerbose(model, ops, timeout)
	cr := checkResult{Ops: len(ops)}
	switch res {
	case porcupine.Ok:
		cr.Result = "linearizable"
	case porcupine.Illegal:
		cr.Result = "NOT linearizable"
		cr.FirstViolation = firstViolation(model, ops, info)
	default:
		cr.Result = "unknown (checker timed out)"
	}
	return cr
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
