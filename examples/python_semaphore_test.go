package examples_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lockd/lockd/examples/kvstore"
	"github.com/lockd/lockd/fence"
	"github.com/lockd/lockd/internal/lockdtest"
)

// pyWorker is a Python process that takes a grant from the example's
// Client ("permit", "read" or "write") rounds times, tells the resource
// it enters (with the grant's fence headers), holds for hold seconds (longer
// than the TTL: only renewal keeps the grant), leaves and releases.
const pyWorker = `import sys, time, urllib.request
sys.path.insert(0, "python"); import lockd_example as m
addr, res, key, kind, rounds, hold, ttl, permits = sys.argv[1:9]
c = m.Client(addr)
def tell(path, g):
    req = urllib.request.Request(res + path + "?mode=" + kind, data=b"", method="POST", headers=g.fence_headers())
    with urllib.request.urlopen(req, timeout=120) as r:
        r.read()
for i in range(int(rounds)):
    if kind == "permit":
        g = c.acquire_semaphore(key, int(permits), ttl_ms=int(ttl), wait_ms=90000, owner="py-permit")
    elif kind == "read":
        g = c.acquire_read(key, ttl_ms=int(ttl), wait_ms=90000, owner="py-read")
    else:
        g = c.acquire_write(key, ttl_ms=int(ttl), wait_ms=90000, owner="py-write")
    tell("/enter", g)
    time.sleep(float(hold))
    if not g.valid():
        sys.exit("lost its grant while holding it")
    tell("/leave", g)
    g.release()
    print(kind, "round", i, "token", g.token, "slot", getattr(g, "slot", "-"), flush=True)
`

// runPyWorkers runs one pyWorker per kind at once and fails the test with
// the output of any that fails.
func runPyWorkers(t *testing.T, ctx context.Context, lockdAddr, resURL, key string, kinds []string, rounds int, hold string, ttlMs, permits int) {
	t.Helper()
	var wg sync.WaitGroup
	outs := make([][]byte, len(kinds))
	errs := make([]error, len(kinds))
	for i, kind := range kinds {
		cmd := exec.CommandContext(ctx, "python3", "-c", pyWorker, lockdAddr, resURL, key, kind,
			strconv.Itoa(rounds), hold, strconv.Itoa(ttlMs), strconv.Itoa(permits))
		cmd.Env = os.Environ()
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], errs[i] = cmd.CombinedOutput()
		}()
	}
	wg.Wait()
	for i := range kinds {
		t.Logf("worker %d (%s):\n%s", i, kinds[i], outs[i])
		if errs[i] != nil {
			t.Errorf("worker %d (%s): %v", i, kinds[i], errs[i])
		}
	}
}

// semResource is the resource a semaphore protects, counting who is inside
// by what the workers do to it (enter, leave), not by what they report.
// Enter is fenced per (key, slot) by fence.Middleware. The first holders to
// leave wait until permits of them were inside at once (bounded), so the
// test sees the semaphore really admit its N.
type semResource struct {
	permits int
	guard   fence.Guard

	mu       sync.Mutex
	inside   map[int]uint64 // slot → the token inside on it
	max      int
	full     chan struct{} // closed once permits were inside at once
	tokens   map[int][]uint64
	problems []string
}

func newSemResource(permits int) *semResource {
	return &semResource{permits: permits, inside: map[int]uint64{}, full: make(chan struct{}), tokens: map[int][]uint64{}}
}

func (s *semResource) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("POST /enter", fence.Middleware(&s.guard)(http.HandlerFunc(s.enter)))
	mux.HandleFunc("POST /leave", s.leave)
	return mux
}

func (s *semResource) enter(w http.ResponseWriter, r *http.Request) {
	f, _ := fence.FromContext(r.Context())
	s.mu.Lock()
	defer s.mu.Unlock()
	if !f.Slotted || f.Slot < 0 || f.Slot >= s.permits {
		s.problems = append(s.problems, fmt.Sprintf("token %d entered with slot %d (slotted %v), want 0..%d", f.Token, f.Slot, f.Slotted, s.permits-1))
	}
	if other, ok := s.inside[f.Slot]; ok {
		s.problems = append(s.problems, fmt.Sprintf("token %d entered on slot %d while token %d was inside on it", f.Token, f.Slot, other))
	}
	if ts := s.tokens[f.Slot]; len(ts) > 0 && f.Token <= ts[len(ts)-1] {
		s.problems = append(s.problems, fmt.Sprintf("slot %d: token %d after %d, want strictly increasing", f.Slot, f.Token, ts[len(ts)-1]))
	}
	s.tokens[f.Slot] = append(s.tokens[f.Slot], f.Token)
	s.inside[f.Slot] = f.Token
	if n := len(s.inside); n > s.max {
		s.max = n
		if n == s.permits {
			close(s.full)
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *semResource) leave(w http.ResponseWriter, r *http.Request) {
	select {
	case <-s.full:
	case <-time.After(90 * time.Second):
		http.Error(w, "never were the semaphore's permits all inside at once", http.StatusInternalServerError)
		return
	}
	slot, _ := strconv.Atoi(r.Header.Get(fence.HeaderSlot))
	token, _ := strconv.ParseUint(r.Header.Get(fence.HeaderToken), 10, 64)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inside[slot] != token {
		s.problems = append(s.problems, fmt.Sprintf("token %d left slot %d, where token %d is inside", token, slot, s.inside[slot]))
	}
	delete(s.inside, slot)
	w.WriteHeader(http.StatusNoContent)
}

// N+2 Python workers share a semaphore of N through the example's
// acquire_semaphore, two permits each, holding each longer than its TTL
// (only renewal keeps it): the resource never has more than N inside, each
// slot in 0..N-1 has one holder at a time, and each slot's tokens increase.
func TestPythonSemaphoreWorkers(t *testing.T) {
	need(t, "python3")
	const permits, rounds = 2, 2
	srv := lockdtest.Start(t, nil)
	res := newSemResource(permits)
	hs := httptest.NewServer(res.handler())
	t.Cleanup(hs.Close)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	kinds := make([]string, permits+2)
	for i := range kinds {
		kinds[i] = "permit"
	}
	runPyWorkers(t, ctx, srv.Addr, hs.URL, "py-sem", kinds, rounds, "2.5", 2000, permits)

	res.mu.Lock()
	defer res.mu.Unlock()
	for _, p := range res.problems {
		t.Error(p)
	}
	if res.max != permits {
		t.Errorf("at most %d holders were inside at once, want exactly %d", res.max, permits)
	}
	n := 0
	for slot, ts := range res.tokens {
		n += len(ts)
		t.Logf("slot %d: tokens %v", slot, ts)
	}
	if want := len(kinds) * rounds; n != want {
		t.Errorf("%d entries, want %d", n, want)
	}
}

// rwResource is the resource an RW lock protects: it counts the readers and
// writers inside and records every entry that breaks "readers share, a
// writer excludes". Writes are fenced (fence.Guard on the key); a reader's
// token must be above every earlier writer's.
type rwResource struct {
	guard fence.Guard

	mu         sync.Mutex
	readers    int
	writers    int
	maxReaders int
	lastWrite  uint64
	writes     int
	shared     chan struct{} // closed once two readers were inside at once
	problems   []string
}

func (s *rwResource) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /enter", s.enter)
	mux.HandleFunc("POST /leave", s.leave)
	return mux
}

func (s *rwResource) enter(w http.ResponseWriter, r *http.Request) {
	mode := r.URL.Query().Get("mode")
	token, _ := strconv.ParseUint(r.Header.Get(fence.HeaderToken), 10, 64)
	s.mu.Lock()
	defer s.mu.Unlock()
	switch mode {
	case "write":
		if err := s.guard.Check(r.Header.Get(fence.HeaderKey), token); err != nil {
			s.problems = append(s.problems, "writer: "+err.Error())
		}
		if s.readers != 0 || s.writers != 0 {
			s.problems = append(s.problems, fmt.Sprintf("writer %d entered with %d readers and %d writers inside", token, s.readers, s.writers))
		}
		s.writers++
		s.writes++
		s.lastWrite = token
	case "read":
		if s.writers != 0 {
			s.problems = append(s.problems, fmt.Sprintf("reader %d entered with a writer inside", token))
		}
		if token <= s.lastWrite {
			s.problems = append(s.problems, fmt.Sprintf("reader token %d not above the last writer's %d", token, s.lastWrite))
		}
		s.readers++
		if s.readers > s.maxReaders {
			s.maxReaders = s.readers
			if s.readers == 2 && s.shared != nil {
				close(s.shared)
			}
		}
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *rwResource) leave(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	shared := s.shared
	s.mu.Unlock()
	if shared != nil {
		select {
		case <-shared:
		case <-time.After(90 * time.Second):
			http.Error(w, "the two readers were never inside at once", http.StatusInternalServerError)
			return
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.URL.Query().Get("mode") == "write" {
		s.writers--
	} else {
		s.readers--
	}
	w.WriteHeader(http.StatusNoContent)
}

// Python readers and writers through the example's acquire_read and
// acquire_write: two readers are inside together (readers share), then two
// writers and two readers contend for two rounds each, holding each grant
// longer than its TTL, and the resource never has a writer beside anyone.
func TestPythonRWLockWorkers(t *testing.T) {
	need(t, "python3")
	srv := lockdtest.Start(t, nil)
	res := &rwResource{shared: make(chan struct{})}
	hs := httptest.NewServer(res.handler())
	t.Cleanup(hs.Close)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	// Readers share: neither leaves before both were inside.
	runPyWorkers(t, ctx, srv.Addr, hs.URL, "py-rw", []string{"read", "read"}, 1, "0.2", 10000, 0)
	// A writer excludes.
	res.mu.Lock()
	res.shared = nil
	res.mu.Unlock()
	runPyWorkers(t, ctx, srv.Addr, hs.URL, "py-rw", []string{"write", "read", "write", "read"}, 2, "2.5", 2000, 0)

	res.mu.Lock()
	defer res.mu.Unlock()
	for _, p := range res.problems {
		t.Error(p)
	}
	if res.maxReaders < 2 {
		t.Errorf("at most %d readers inside at once, want 2", res.maxReaders)
	}
	if res.writes != 4 || res.readers != 0 || res.writers != 0 {
		t.Errorf("%d writes, %d readers and %d writers left inside; want 4, 0, 0", res.writes, res.readers, res.writers)
	}
}

// The example's semaphore, write and read commands each take their grant;
// the permit and the writer write to a fenced kvstore with their headers
// (the permit's with Lock-Slot), the reader reads the writer's value; each
// renews, inspects and releases, leaving nothing held.
func TestPythonSemaphoreAndRWCommands(t *testing.T) {
	need(t, "python3")
	srv := lockdtest.Start(t, nil)
	kv := httptest.NewServer(kvstore.NewStore().Handler())
	t.Cleanup(kv.Close)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var written string // the token of the last write
	for _, tc := range []struct {
		args  []string
		grant *regexp.Regexp // its first group is the token
		state string         // %s is the token
		after string         // the inspection path once released
		free  string
	}{
		{[]string{"semaphore", "py-cmd-sem", "3"}, regexp.MustCompile(`acquired py-cmd-sem slot=0 of 3 token=(\d+)`),
			"status: permits=3 holders(slot:token)=0:%s", "/v1/semaphores/py-cmd-sem", `"holders":[]`},
		{[]string{"write", "py-cmd-rw"}, regexp.MustCompile(`acquired py-cmd-rw mode=write token=(\d+)`),
			"status: mode=write holders=1", "/v1/rwlocks/py-cmd-rw", `"holders":[]`},
		// The reader reads what the writer wrote, and writes nothing.
		{[]string{"read", "py-cmd-rw"}, regexp.MustCompile(`acquired py-cmd-rw mode=read token=(\d+)`),
			"status: mode=read holders=1", "/v1/rwlocks/py-cmd-rw", `"holders":[]`},
	} {
		kvURL := kv.URL + "/kv/" + tc.args[1]
		cmd := exec.CommandContext(ctx, "python3", append([]string{"python/lockd_example.py"}, tc.args...)...)
		cmd.Env = append(os.Environ(), "LOCKD_ADDR="+srv.Addr, "KV_URL="+kvURL)
		out, err := cmd.CombinedOutput()
		t.Logf("lockd_example.py %s:\n%s", strings.Join(tc.args, " "), out)
		if err != nil {
			t.Fatalf("lockd_example.py %s: %v", strings.Join(tc.args, " "), err)
		}
		m := tc.grant.FindStringSubmatch(string(out))
		if m == nil {
			t.Fatalf("output lacks %s", tc.grant)
		}
		key := tc.args[1]
		did := "wrote " + kvURL + ": 204"
		if tc.args[0] == "read" {
			did = "read " + kvURL + ": 200 written by python with token " + written
		} else {
			written = m[1]
		}
		for _, want := range []string{did, "renewed " + key + " token=" + m[1],
			strings.ReplaceAll(tc.state, "%s", m[1]), "released " + key} {
			if !strings.Contains(string(out), want) {
				t.Errorf("output lacks %q", want)
			}
		}
		got, slot := httpGet(t, kvURL)
		if !strings.Contains(got, "token "+written) {
			t.Errorf("kvstore holds %q, want the write with token %s", got, written)
		}
		if want := map[bool]string{true: "0"}[tc.args[0] == "semaphore"]; slot != want {
			t.Errorf("kvstore's write has Lock-Slot %q, want %q", slot, want)
		}
		if got, _ := httpGet(t, srv.URL+tc.after); !strings.Contains(got, tc.free) {
			t.Errorf("after the example %s is %s, want %s", tc.after, got, tc.free)
		}
	}
}

// httpGet returns url's body and its Lock-Slot header.
func httpGet(t *testing.T, url string) (string, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b), resp.Header.Get("Lock-Slot")
}
