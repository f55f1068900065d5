package report

import (
	"fmt"
	"strings"

	"github.com/lockd/lockd/compare/harness"
)

// semaphoreSection: one semaphore's closed-loop throughput by size, and a
// permit's handoff to the head of the line.
func semaphoreSection(d *doc, ran []*harness.BackendRun) {
	var rows [][]tcell
	cols := 0
	for _, br := range ran {
		if s := br.Semaphores; s != nil {
			cols = max(cols, len(s.Throughput))
		}
	}
	var head []string
	for _, br := range ran {
		s := br.Semaphores
		if s == nil {
			continue
		}
		if head == nil {
			head = []string{"backend", "via"}
			for _, c := range s.Throughput {
				head = append(head, fmt.Sprintf("N = %d (%d clients)", c.Permits, c.Clients))
			}
			head = append(head, "handoff p50", "p99", "head passed over", "direct baseline")
		}
		row := []tcell{plain(br.Name), plain(s.Via)}
		why := ""
		switch {
		case s.Unsupported != "":
			why = "n/a (not supported: " + s.Unsupported + ")"
		case s.Unmeasured != "":
			why = "not measured: " + s.Unmeasured
		}
		if why != "" {
			row = append(row, plain(why))
			for len(row) < len(head)-1 {
				row = append(row, plain(""))
			}
			rows = append(rows, append(row, plain(s.Direct)))
			continue
		}
		for _, c := range s.Throughput {
			if c.Unmeasured != "" {
				row = append(row, plain("not measured: "+c.Unmeasured))
				continue
			}
			row = append(row, plain(fmt.Sprintf("%.0f grants/s", c.PerSec)))
		}
		for len(row) < 2+cols {
			row = append(row, plain("—"))
		}
		if h := s.Handoff; h != nil && h.Lat != nil {
			row = append(row, plain(fmtUS(h.Lat.P50)), plain(fmtUS(h.Lat.P99)), passCell(h.PassedOver == 0, fmt.Sprintf("%d of %d", h.PassedOver, h.Handoffs)))
		} else {
			what := "not measured"
			if h != nil && h.Unmeasured != "" {
				what += ": " + h.Unmeasured
			}
			row = append(row, plain(what), plain(""), plain(""))
		}
		rows = append(rows, append(row, plain(s.Direct)))
	}
	if len(rows) == 0 {
		return
	}
	d.h2("Semaphores")
	d.p("Throughput: grants per second of one semaphore with N permits, 2N clients each looping acquire (waiting) → release at once. Handoff: with a semaphore of %d, every permit held and %d clients in line (each seen queued by inspection before the next asks), the time from one holder's release send to the head of the line's grant; a grant to another waiter than the head counts as passed over (red). No Go library on these stores has a semaphore, so there is no direct baseline; the last column says which library was looked at.", firstHandoffPermits(ran), firstHandoffWaiters(ran))
	d.table(head, rows)
}

func firstHandoffPermits(ran []*harness.BackendRun) int {
	for _, br := range ran {
		if s := br.Semaphores; s != nil && s.Handoff != nil {
			return s.Handoff.Permits
		}
	}
	return 0
}

func firstHandoffWaiters(ran []*harness.BackendRun) int {
	for _, br := range ran {
		if s := br.Semaphores; s != nil && s.Handoff != nil {
			return s.Handoff.Waiters
		}
	}
	return 0
}

// rwlockSection: the writer's wait under a reader flood, and the readers'
// rate.
func rwlockSection(d *doc, ran []*harness.BackendRun) {
	var rows [][]tcell
	hold := 0.0
	for _, br := range ran {
		r := br.RWLocks
		if r == nil {
			continue
		}
		why := ""
		switch {
		case r.Unsupported != "":
			why = "n/a (not supported: " + r.Unsupported + ")"
		case r.Unmeasured != "":
			why = "not measured: " + r.Unmeasured
		}
		if why != "" {
			rows = append(rows, []tcell{plain(br.Name), plain(r.Via), plain(why), plain(""), plain(""), plain(""), plain(""), plain(""), plain(r.Direct)})
			continue
		}
		for _, c := range r.Flood {
			hold = c.HoldMs
			cut := "—"
			if c.CutShortMs > 0 {
				cut = fmtMS(c.CutShortMs)
			}
			if c.WriterWait == nil {
				rows = append(rows, []tcell{plain(br.Name), plain(r.Via), plain(fmt.Sprint(c.Readers)), plain("not measured: " + c.Unmeasured), plain(""), plain(""), plain(cut), plain(fmt.Sprintf("%.0f", c.ReadsPerS)), plain(r.Direct)})
				continue
			}
			rows = append(rows, []tcell{plain(br.Name), plain(r.Via), plain(fmt.Sprint(c.Readers)), plain(fmt.Sprintf("%s (%d writes)", fmtUS(c.WriterWait.P50), c.Writes)),
				plain(fmtUS(c.WriterWait.P99)), plain(fmtUS(c.WriterWait.Max)), plain(cut), plain(fmt.Sprintf("%.0f", c.ReadsPerS)), plain(r.Direct)})
		}
	}
	if len(rows) == 0 {
		return
	}
	d.h2("Read-write locks")
	d.p("Writer wait under a reader flood (the starvation number): readers in a closed loop each hold their read lock %s and release, one writer arrives again and again (holding 1 ms, then pausing twice the readers' hold), and its wait from send to grant is shown; with one queue for both modes it is bounded by the readers already inside, an unfair lock would let it grow with the flood (no unfair lock is simulated here: only lockd's is measured). Cut short: how long the writer had waited when the run ended with it still in line. Reads/s: the readers' grants per second during the flood.", fmtMS(hold))
	d.table([]string{"backend", "via", "readers", "writer wait p50", "p99", "max", "cut short", "reads/s", "direct baseline"}, rows)
}

// primitiveWorkloadsNote says what the primitive workloads beside the lock
// workload do, under the check table.
func primitiveWorkloadsNote(d *doc, ran []*harness.BackendRun) {
	var off []string
	for _, br := range ran {
		for _, c := range br.Correctness {
			for _, name := range []string{harness.CheckSemOverN, harness.CheckRWWriterOverlap} {
				if ch := c.CheckOf(name); ch != nil && !ch.Applies && strings.HasPrefix(ch.NotApplicable, "not supported") {
					off = append(off, br.Name+" "+strings.SplitN(name, ":", 2)[0])
				}
			}
			break
		}
	}
	d.p("The semaphore and read-write lock checks come from two more workloads beside the lock workload in every cell, on the same replicas under the same fault: %d clients hold permits of a semaphore of %d (a TTL on average, renewed every TTL/3), each writing to a fenced register per (key, slot) with its token; 3 clients take a read-write lock (a third of the TTL on average), one acquire in three in write mode. A holder holds from its grant's return until it sends its release or its own deadline passes. Over N permits: a grant that returned while N other valid permits were held. Slot token order: a write, within the writer's lease, with a token below one its slot's register had already taken. Writer overlap: a writer holding while any other valid holder held.", semClients(ran), semPermits(ran))
	if len(off) > 0 {
		d.p("Not applicable where the backend keeps no such primitive (the cell names the reason /v1/capabilities gives): %s.", strings.Join(dedupe(off), ", "))
	}
}

func dedupe(xs []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range xs {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

func semClients(ran []*harness.BackendRun) int {
	for _, br := range ran {
		for _, c := range br.Correctness {
			if c.Semaphore != nil {
				return c.Semaphore.Clients
			}
		}
	}
	return 0
}

func semPermits(ran []*harness.BackendRun) int {
	for _, br := range ran {
		for _, c := range br.Correctness {
			if c.Semaphore != nil {
				return c.Semaphore.Permits
			}
		}
	}
	return 0
}
