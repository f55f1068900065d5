package harness

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// bar is the live progress line of one scenario on one backend.
type bar struct {
	w     io.Writer
	tty   bool
	label string
	start time.Time

	mu   sync.Mutex
	last time.Time
	frac float64
}

func isTTY(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func newBar(w io.Writer, label string) *bar {
	b := &bar{w: w, tty: isTTY(w), label: label, start: time.Now()}
	b.draw(0, false)
	return b
}

// set moves the bar to frac (0..1). Safe for concurrent use.
func (b *bar) set(frac float64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	frac = min(max(frac, 0), 1)
	if frac < b.frac {
		return
	}
	b.frac = frac
	if !b.tty || time.Since(b.last) < 100*time.Millisecond {
		return
	}
	b.last = time.Now()
	b.drawLocked(false)
}

// part returns a progress func for sub-run i of n.
func (b *bar) part(i, n int) func(float64) {
	return func(f float64) { b.set((float64(i) + min(max(f, 0), 1)) / float64(n)) }
}

func (b *bar) done(status string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.frac = 1
	b.drawLocked(true)
	if status != "" {
		fmt.Fprintf(b.w, "    %s\n", status)
	}
}

func (b *bar) draw(frac float64, final bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.frac = frac
	b.drawLocked(final)
}

func (b *bar) drawLocked(final bool) {
	const width = 30
	n := int(b.frac * width)
	el := time.Since(b.start)
	rem := "?"
	if b.frac > 0.02 && !final {
		rem = (time.Duration(float64(el)/b.frac) - el).Round(100 * time.Millisecond).String()
	} else if final {
		rem = "0s"
	}
	line := fmt.Sprintf("%-28s [%s%s] %3.0f%%  elapsed %-7s remaining %s", b.label,
		strings.Repeat("#", n), strings.Repeat(".", width-n), b.frac*100, el.Round(100*time.Millisecond), rem)
	switch {
	case b.tty && final:
		fmt.Fprintf(b.w, "\r\033[K%s\n", line)
	case b.tty:
		fmt.Fprintf(b.w, "\r\033[K%s", line)
	case final:
		fmt.Fprintln(b.w, line)
	}
}
