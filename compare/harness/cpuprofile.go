package harness

// Where a row's time goes: a CPU profile of this process while the row runs
// (runtime/pprof), read back with github.com/google/pprof/profile and
// summed by who spent it (lockd's HTTP server, lockd's backend, the store's
// client library, the compare's own client, the embedded store, the
// runtime) and by the package that did the work, per measured cycle. Out of
// process stores are charged their processes' CPU time over the same span
// (/proc/<pid>/stat), so a cost that is the store's shows as the store's.

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"

	"github.com/google/pprof/profile"
)

// CPUProfile is one row's CPU, per measured cycle (one acquire + release,
// one renewal...).
type CPUProfile struct {
	Cycles int64 `json:"cycles"`
	// PerCycleUS is this process's sampled CPU per cycle, all of it.
	PerCycleUS float64 `json:"cpu_per_cycle_us"`
	// StorePerCycleUS is the store's processes' CPU per cycle when the
	// store runs apart (zero when it runs inside this process: then it is
	// a Side of its own).
	StorePerCycleUS float64 `json:"store_cpu_per_cycle_us,omitempty"`
	StoreNote       string  `json:"store_note,omitempty"`
	// Sides split PerCycleUS by who spent it; Parts by the package doing
	// the work (runtime work charged to what it served where the stack
	// says: an allocation to its caller's package).
	Sides []CPUPart `json:"sides"`
	Parts []CPUPart `json:"parts"`
	// Samples the profile holds (100 a CPU-second).
	Samples int64 `json:"samples"`
	// File is the raw profile, relative to the run's output directory
	// (`go tool pprof -top FILE`).
	File       string `json:"file,omitempty"`
	Unmeasured string `json:"unmeasured,omitempty"`
	raw        []byte
}

// save writes the raw profile as out/profiles/<name>.cpu.pb.gz (name made
// safe for a file name) and records where.
func (p *CPUProfile) save(out, name string) {
	if p == nil || len(p.raw) == 0 || out == "" {
		return
	}
	p.File = saveProfile(out, name+".cpu", p.raw)
}

// saveProfile writes raw as out/profiles/<name>.pb.gz (name made safe for a
// file name) and returns that path relative to out ("" when not written).
func saveProfile(out, name string, raw []byte) string {
	rel := filepath.Join("profiles", fileSafe(name)+".pb.gz")
	if os.MkdirAll(filepath.Join(out, "profiles"), 0o755) != nil || os.WriteFile(filepath.Join(out, rel), raw, 0o644) != nil {
		return ""
	}
	return rel
}

// CPUPart is a share of a row's CPU.
type CPUPart struct {
	Name       string  `json:"name"`
	PerCycleUS float64 `json:"per_cycle_us"`
}

// Part returns the per-cycle CPU of the named side or part (0 when absent).
func (p *CPUProfile) Part(name string) float64 {
	if p == nil {
		return 0
	}
	for _, s := range append(append([]CPUPart(nil), p.Sides...), p.Parts...) {
		if s.Name == name {
			return s.PerCycleUS
		}
	}
	return 0
}

// The sides of a row's CPU.
const (
	SideLockdHTTP    = "lockd: HTTP server and API"
	SideLockdBackend = "lockd: backend (in process)"
	SideStoreClient  = "store client library"
	SideCompare      = "compare's client (the load)"
	SideStore        = "store (embedded, in this process)"
	SideGC           = "runtime: GC"
	SideRuntime      = "runtime: scheduler, timers, other"
)

// profileCPU runs run under a CPU profile of this process and charges the
// out-of-process store pids' CPU over the same span. run returns how many
// cycles it measured. Only one CPU profile can run in a process at a time;
// a second is reported unmeasured.
func profileCPU(storePIDs []int, storeNote string, run func() int64) *CPUProfile {
	var buf bytes.Buffer
	if err := pprof.StartCPUProfile(&buf); err != nil {
		run()
		return &CPUProfile{Unmeasured: "no CPU profile: " + err.Error()}
	}
	store0 := procsCPU(storePIDs)
	cycles := run()
	store1 := procsCPU(storePIDs)
	pprof.StopCPUProfile()
	p := &CPUProfile{Cycles: cycles, StoreNote: storeNote, raw: buf.Bytes()}
	if cycles <= 0 {
		p.Unmeasured = "no cycle measured"
		return p
	}
	if len(storePIDs) > 0 && store0 >= 0 && store1 >= 0 {
		p.StorePerCycleUS = float64(store1-store0) / float64(cycles) * 1e6
	}
	prof, err := profile.Parse(bytes.NewReader(p.raw))
	if err != nil {
		p.Unmeasured = "profile unreadable: " + err.Error()
		return p
	}
	sides, parts := map[string]float64{}, map[string]float64{}
	ci := cpuIndex(prof)
	var total float64
	for _, s := range prof.Sample {
		if ci < 0 || ci >= len(s.Value) {
			continue
		}
		ns := float64(s.Value[ci])
		p.Samples++
		total += ns
		frames := sampleFrames(s)
		side, part := chargeSample(frames)
		sides[side] += ns
		parts[part] += ns
	}
	per := func(ns float64) float64 { return ns / 1e3 / float64(cycles) }
	p.PerCycleUS = per(total)
	p.Sides = sortedParts(sides, per, 0)
	p.Parts = sortedParts(parts, per, 12)
	return p
}

func cpuIndex(p *profile.Profile) int {
	for i, st := range p.SampleType {
		if st.Type == "cpu" {
			return i
		}
	}
	return len(p.SampleType) - 1
}

// sampleFrames lists a sample's function names, leaf first.
func sampleFrames(s *profile.Sample) []string {
	var out []string
	for _, loc := range s.Location {
		for _, ln := range loc.Line {
			if ln.Function != nil {
				out = append(out, ln.Function.Name)
			}
		}
	}
	return out
}

func sortedParts(m map[string]float64, per func(float64) float64, keep int) []CPUPart {
	var out []CPUPart
	for k, v := range m {
		out = append(out, CPUPart{Name: k, PerCycleUS: per(v)})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].PerCycleUS != out[j].PerCycleUS {
			return out[i].PerCycleUS > out[j].PerCycleUS
		}
		return out[i].Name < out[j].Name
	})
	if keep > 0 && len(out) > keep {
		var rest float64
		for _, o := range out[keep:] {
			rest += o.PerCycleUS
		}
		out = append(out[:keep], CPUPart{Name: "everything else", PerCycleUS: rest})
	}
	return out
}

// fileSafe makes name a file name: letters, digits, '-' and '.' kept, the
// rest '_'.
func fileSafe(name string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' {
			return r
		}
		return '_'
	}, name)
}

// chargeSample says who spent a sample (its side) and which package did the
// work (its part), from its frames, leaf first: the leaf-most frame that
// belongs to a side decides (a store client call made from lockd's HTTP
// handler is the store client library's; the JSON encoding under lockd's
// handler is lockd's HTTP side).
func chargeSample(frames []string) (side, part string) {
	part = workOf(frames)
	for _, f := range frames {
		if strings.HasPrefix(f, "runtime.gcBgMarkWorker") {
			return SideGC, part
		}
	}
	for _, f := range frames {
		for _, r := range sideRules {
			for _, sub := range r.frames {
				if strings.Contains(f, sub) {
					return r.side, part
				}
			}
		}
	}
	return SideRuntime, part
}

// sideRules map a frame to its side, tried in order on each frame.
var sideRules = []struct {
	side   string
	frames []string
}{
	{SideStore, []string{"go.etcd.io/etcd/server/", "go.etcd.io/raft/", "go.etcd.io/bbolt"}},
	{SideStoreClient, []string{"google.golang.org/grpc", "go.etcd.io/etcd/client/", "github.com/go-zookeeper/zk", "github.com/redis/go-redis", "github.com/go-redsync/"}},
	{SideLockdBackend, []string{"lockd/lockd/backend/"}},
	{SideLockdHTTP, []string{"lockd/lockd/internal/", "github.com/go-chi/", "net/http.(*conn)", "net/http.(*http2serverConn)", "net/http.(*http2responseWriter", "net/http.(*response)", "net/http.(*connReader)", "net/http.serverHandler"}},
	{SideCompare, []string{"lockd/lockd/compare/", "net/http.(*persistConn)", "net/http.(*Transport)", "net/http.(*http2ClientConn)", "net/http.(*http2clientConnReadLoop)", "net/http.(*Client)"}},
}

// workOf names the package doing a sample's work: the leaf-most frame
// outside the runtime's own machinery, or the runtime's machinery by kind.
func workOf(frames []string) string {
	for i, f := range frames {
		pkg := funcPackage(f)
		switch {
		case pkg == "runtime" && (strings.HasPrefix(f, "runtime.gcBgMarkWorker") || strings.HasPrefix(f, "runtime.gcDrain") || strings.HasPrefix(f, "runtime.markroot") || strings.HasPrefix(f, "runtime.scanobject")) && !hasAlloc(frames[:i+1]):
			return "runtime: GC marking"
		case pkg == "runtime" && (f == "runtime.mallocgc" || strings.HasPrefix(f, "runtime.newobject") || strings.HasPrefix(f, "runtime.growslice") || strings.HasPrefix(f, "runtime.makeslice")):
			return "allocation, for " + callerPackage(frames[i+1:])
		case pkg == "syscall" || pkg == "internal/runtime/syscall" || f == "runtime.netpoll":
			return "syscalls, for " + callerPackage(frames[i+1:])
		case pkg == "runtime" && (strings.HasPrefix(f, "runtime.schedule") || strings.HasPrefix(f, "runtime.findRunnable") || strings.HasPrefix(f, "runtime.park_m") || strings.HasPrefix(f, "runtime.mcall") || strings.HasPrefix(f, "runtime.futex") || strings.HasPrefix(f, "runtime.usleep") || strings.HasPrefix(f, "runtime.stealWork")):
			return "runtime: scheduler"
		}
		if !runtimeish(pkg) && !utility[pkg] {
			return shortPkg(pkg)
		}
	}
	return "runtime: other"
}

// utility packages do work for their caller, which is charged for it
// (bytes.Buffer growing under encoding/json is JSON's cost).
var utility = map[string]bool{
	"bytes": true, "strings": true, "strconv": true, "bufio": true, "reflect": true, "sort": true, "slices": true, "maps": true,
	"unicode": true, "unicode/utf8": true, "unicode/utf16": true, "math": true, "math/bits": true, "errors": true, "io": true, "fmt": true,
}

func hasAlloc(frames []string) bool {
	for _, f := range frames {
		if f == "runtime.mallocgc" || strings.HasPrefix(f, "runtime.gcAssist") {
			return true
		}
	}
	return false
}

// callerPackage is the first package above the runtime's frames.
func callerPackage(frames []string) string {
	for _, f := range frames {
		if pkg := funcPackage(f); !runtimeish(pkg) && !utility[pkg] {
			return shortPkg(pkg)
		}
	}
	return "runtime"
}

func runtimeish(pkg string) bool {
	return pkg == "runtime" || strings.HasPrefix(pkg, "runtime/") || strings.HasPrefix(pkg, "internal/") || pkg == "sync" || pkg == "sync/atomic" || pkg == "syscall"
}

// funcPackage is the import path of a function name as pprof gives it
// ("net/http.(*conn).serve" → "net/http").
func funcPackage(f string) string {
	if i := strings.IndexByte(f, '['); i >= 0 { // a generic's shape
		f = f[:i]
	}
	if !strings.Contains(f, ".") { // an assembly routine of the runtime
		return "runtime"
	}
	slash := strings.LastIndex(f, "/")
	dot := strings.Index(f[slash+1:], ".")
	if dot < 0 {
		return f
	}
	return f[:slash+1+dot]
}

// shortPkg trims a module path to what a reader knows it by.
func shortPkg(pkg string) string {
	for _, p := range []string{"github.com/lockd/lockd/", "github.com/", "go.etcd.io/", "google.golang.org/", "golang.org/x/"} {
		if s, ok := strings.CutPrefix(pkg, p); ok {
			return s
		}
	}
	return pkg
}

// procsCPU sums the CPU time (user + system) of pids, in seconds; -1 when
// one cannot be read.
func procsCPU(pids []int) float64 {
	var total float64
	for _, pid := range pids {
		raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return -1
		}
		// Fields after the command's closing parenthesis: utime and stime
		// are the 12th and 13th of them (fields 14 and 15 of the line).
		s := string(raw)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 13 {
			return -1
		}
		u, err1 := strconv.ParseFloat(f[11], 64)
		k, err2 := strconv.ParseFloat(f[12], 64)
		if err1 != nil || err2 != nil {
			return -1
		}
		total += (u + k) / clockTicks
	}
	return total
}

// clockTicks is the kernel's USER_HZ, 100 on every Linux Go runs on.
const clockTicks = 100

// storePIDs finds the store's processes of d (none when it runs here).
func storePIDs(d *deployment) ([]int, string) {
	if d.inProcess {
		return nil, "the store runs in this process: its CPU is the side " + strconv.Quote(SideStore)
	}
	var pids []int
	seen := map[int]bool{}
	for _, a := range d.Addrs {
		pid, err := listenerPID(a)
		if err != nil {
			return nil, "store CPU not read: " + err.Error()
		}
		if !seen[pid] {
			seen[pid] = true
			pids = append(pids, pid)
		}
	}
	return pids, fmt.Sprintf("the store's %d process(es), /proc/<pid>/stat over the row", len(pids))
}
