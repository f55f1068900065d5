package harness

// Where a lockd process's memory is while its long polls wait: the child
// lockd (lockdproc.go) answers /debug/compare/mem with its Go runtime's
// account (heap, goroutine stacks, the runtime's own) and its heap and
// goroutine profiles summed by the function that allocated or where each
// goroutine waits; /debug/compare/heap gives the raw heap profile.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/pprof/profile"
)

// MemProfile is a lockd process's memory by kind and by who holds it.
type MemProfile struct {
	Goroutines int `json:"goroutines"`
	// HeapInuseMB: spans with live objects; StackMB: goroutine stacks;
	// RuntimeMB: the runtime's own (span and GC metadata, caches, other);
	// RetainedMB: heap freed but not yet returned to the OS. Together with
	// the binary's text and the C side they make up the RSS.
	HeapInuseMB float64 `json:"heap_inuse_mb"`
	StackMB     float64 `json:"stack_mb"`
	RuntimeMB   float64 `json:"runtime_mb"`
	RetainedMB  float64 `json:"retained_mb"`
	// Heap: live heap by the function that allocated it (the leaf-most
	// frame outside the runtime), largest first.
	Heap []MemPart `json:"heap"`
	// Waiting: goroutines by the function they wait in.
	Waiting []GoroutineGroup `json:"waiting"`
	// File is the raw heap profile, relative to the output directory.
	File       string `json:"file,omitempty"`
	Unmeasured string `json:"unmeasured,omitempty"`
}

// MemPart is a share of the live heap.
type MemPart struct {
	Where string  `json:"where"`
	MB    float64 `json:"mb"`
}

// GoroutineGroup is goroutines waiting in one function.
type GoroutineGroup struct {
	Where string `json:"where"`
	Count int    `json:"count"`
}

const memPath, heapPath, cpuPath = "/debug/compare/mem", "/debug/compare/heap", "/debug/compare/cpu"

// cpuReply is the child's CPU profile over a span, with its raw bytes.
type cpuReply struct {
	Profile *CPUProfile `json:"profile"`
	Raw     []byte      `json:"raw"`
}

// serveMemDebug answers the two debug paths and passes the rest to next.
func serveMemDebug(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case memPath:
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(ownMemProfile())
		case cpuPath:
			// CPU per second of the span: the cycles are its seconds.
			secs, _ := strconv.Atoi(r.URL.Query().Get("seconds"))
			secs = max(1, min(secs, 30))
			p := profileCPU(nil, "", func() int64 {
				time.Sleep(time.Duration(secs) * time.Second)
				return int64(secs)
			})
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(cpuReply{Profile: p, Raw: p.raw})
		case heapPath:
			runtime.GC()
			_ = pprof.Lookup("heap").WriteTo(w, 0)
		default:
			next.ServeHTTP(w, r)
		}
	})
}

func ownMemProfile() *MemProfile {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	mb := func(b uint64) float64 { return float64(b) / (1 << 20) }
	m := &MemProfile{
		Goroutines:  runtime.NumGoroutine(),
		HeapInuseMB: mb(ms.HeapInuse),
		StackMB:     mb(ms.StackInuse),
		RuntimeMB:   mb(ms.MSpanInuse + ms.MCacheInuse + ms.BuckHashSys + ms.GCSys + ms.OtherSys),
		RetainedMB:  mb(ms.HeapIdle - ms.HeapReleased),
	}
	var buf bytes.Buffer
	if err := pprof.Lookup("heap").WriteTo(&buf, 0); err != nil {
		m.Unmeasured = "heap profile: " + err.Error()
		return m
	}
	if hp, err := profile.Parse(&buf); err == nil {
		vi := sampleIndex(hp, "inuse_space")
		by := map[string]float64{}
		for _, s := range hp.Sample {
			by[allocSite(sampleFrames(s))] += float64(s.Value[vi])
		}
		for w, b := range by {
			m.Heap = append(m.Heap, MemPart{Where: w, MB: b / (1 << 20)})
		}
		sort.Slice(m.Heap, func(i, j int) bool { return m.Heap[i].MB > m.Heap[j].MB })
		m.Heap = m.Heap[:min(len(m.Heap), 10)]
	}
	buf.Reset()
	if err := pprof.Lookup("goroutine").WriteTo(&buf, 0); err == nil {
		if gp, err := profile.Parse(&buf); err == nil {
			by := map[string]int{}
			for _, s := range gp.Sample {
				by[firstOwnFrame(sampleFrames(s))] += int(s.Value[0])
			}
			for w, n := range by {
				m.Waiting = append(m.Waiting, GoroutineGroup{Where: w, Count: n})
			}
			sort.Slice(m.Waiting, func(i, j int) bool { return m.Waiting[i].Count > m.Waiting[j].Count })
			m.Waiting = m.Waiting[:min(len(m.Waiting), 8)]
		}
	}
	return m
}

func sampleIndex(p *profile.Profile, typ string) int {
	for i, st := range p.SampleType {
		if st.Type == typ {
			return i
		}
	}
	return len(p.SampleType) - 1
}

// firstOwnFrame is the leaf-most function outside the runtime's machinery
// (runtime, sync, internal/...), short-named.
func firstOwnFrame(frames []string) string {
	for _, f := range frames {
		if !runtimeish(funcPackage(f)) {
			return shortPkg(f)
		}
	}
	if len(frames) > 0 {
		return frames[0]
	}
	return "?"
}

// allocSite names an allocation by its leaf-most own function and that
// one's caller ("bufio.NewWriterSize ← net/http.newBufioWriterSize").
func allocSite(frames []string) string {
	for i, f := range frames {
		if !runtimeish(funcPackage(f)) {
			if up := firstOwnFrame(frames[i+1:]); up != "?" {
				return shortPkg(f) + " ← " + up
			}
			return shortPkg(f)
		}
	}
	return firstOwnFrame(frames)
}

// fetchMem asks the lockd process at url for its memory account and saves
// its raw heap profile as out/profiles/<name>.heap.pb.gz.
func fetchMem(url, out, name string) *MemProfile {
	c := &http.Client{Timeout: time.Minute}
	resp, err := c.Get(url + memPath)
	if err != nil {
		return &MemProfile{Unmeasured: "memory account: " + err.Error()}
	}
	defer resp.Body.Close()
	var m MemProfile
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		return &MemProfile{Unmeasured: "memory account: " + err.Error()}
	}
	if out == "" {
		return &m
	}
	hr, err := c.Get(url + heapPath)
	if err != nil {
		return &m
	}
	defer hr.Body.Close()
	raw, err := io.ReadAll(hr.Body)
	if err != nil {
		return &m
	}
	m.File = saveProfile(out, name+".heap", raw)
	return &m
}

// Summary says in one line where the memory is, per poll when polls > 0.
func (m *MemProfile) Summary(polls int) string {
	if m == nil || m.Unmeasured != "" {
		return ""
	}
	per := func(mb float64) string {
		if polls <= 0 {
			return ""
		}
		return fmt.Sprintf(" (%.1f KB a poll)", mb*1024/float64(polls))
	}
	s := fmt.Sprintf("Go heap in use %.0f MB%s, goroutine stacks %.0f MB%s for %d goroutines", m.HeapInuseMB, per(m.HeapInuseMB), m.StackMB, per(m.StackMB), m.Goroutines)
	if polls > 0 {
		s += fmt.Sprintf(" (%.2f a poll)", float64(m.Goroutines)/float64(polls))
	}
	s += fmt.Sprintf(", runtime's own %.0f MB, freed heap not yet returned %.0f MB", m.RuntimeMB, m.RetainedMB)
	var hs []string
	for i, h := range m.Heap {
		if i == 4 {
			break
		}
		hs = append(hs, fmt.Sprintf("%s %.0f MB", h.Where, h.MB))
	}
	if len(hs) > 0 {
		s += "; heap held by " + strings.Join(hs, ", ")
	}
	var ws []string
	for i, w := range m.Waiting {
		if i == 3 {
			break
		}
		ws = append(ws, fmt.Sprintf("%d in %s", w.Count, w.Where))
	}
	if len(ws) > 0 {
		s += "; goroutines: " + strings.Join(ws, ", ")
	}
	return s
}

// fetchCPU profiles the lockd process at url for secs seconds (run it
// beside the load it should see) and charges the store's pids' CPU over the
// same span; the raw profile goes to out/profiles/<name>.cpu.pb.gz.
func fetchCPU(url, out, name string, secs int, storePIDs []int, storeNote string) *CPUProfile {
	c := &http.Client{Timeout: time.Duration(secs)*time.Second + time.Minute}
	s0 := procsCPU(storePIDs)
	resp, err := c.Get(fmt.Sprintf("%s%s?seconds=%d", url, cpuPath, secs))
	s1 := procsCPU(storePIDs)
	if err != nil {
		return &CPUProfile{Unmeasured: "lockd's CPU profile: " + err.Error()}
	}
	defer resp.Body.Close()
	var r cpuReply
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.Profile == nil {
		return &CPUProfile{Unmeasured: fmt.Sprintf("lockd's CPU profile: %v", err)}
	}
	p := r.Profile
	p.StoreNote = storeNote
	if len(storePIDs) > 0 && s0 >= 0 && s1 >= 0 {
		p.StorePerCycleUS = (s1 - s0) / float64(secs) * 1e6
	}
	p.raw = r.Raw
	p.save(out, name)
	return p
}
