package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// metric reads one unlabelled gauge or counter from lockd's /metrics.
func metric(t *testing.T, base, name string) float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatalf("/metrics: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` ([0-9.e+]+)$`).FindSubmatch(body)
	if m == nil {
		t.Fatalf("/metrics has no %s", name)
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

// eventually polls cond until it holds or the time is up.
func eventually(t *testing.T, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v (%s)", what, within, state)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// rssBytes is a process's resident memory.
func rssBytes(t *testing.T, pid int) int64 {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// A client that opens thousands of connections and long polls cannot take
// lockd down: with 5,000 idle or half-sent connections and 2,000 waiters on
// one key open at once, a health check and an acquire on another key keep
// answering, the 2,001st waiter gets 429, memory stays bounded, the
// half-sent connections are closed by lockd, and every waiter is gone from
// lockd and from the store once its client leaves.
func TestAbuseStaysBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 7,000 connections")
	}
	const (
		idle    = 5000
		waiters = 2000
		// rssBound is far above what lockd was seen to use here (see the
		// log line) and far below what one goroutine per connection with
		// unbounded buffers would take.
		rssBound = 1 << 30
	)
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	// Both ends of every connection live on this machine: this process
	// and lockd (which inherits the limit) each need one descriptor per
	// connection. Root may raise the hard limit.
	if need := uint64(idle + waiters + 1000); lim.Cur < need {
		raised := syscall.Rlimit{Cur: need, Max: max(lim.Max, need)}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err != nil {
			t.Fatalf("RLIMIT_NOFILE is %d (hard %d) and cannot be raised to %d: %v; this test needs that many open files per process (ulimit -n)", lim.Cur, lim.Max, need, err)
		}
		t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim) })
	}

	p := start(t, "--data-dir", filepath.Join(t.TempDir(), "data"),
		"--embed-etcd-client-url", freeURL(t), "--embed-etcd-peer-url", freeURL(t),
		"--max-waiters-per-key", strconv.Itoa(waiters), "--max-waiters", strconv.Itoa(waiters+100),
		"--max-connections", strconv.Itoa(idle+waiters+500), "--read-header-timeout", "60s")
	base, pid := p.base, p.cmd.Process.Pid
	if code, _ := post(t, base+"/v1/locks/hot/acquire", `{"ttl_ms": 300000}`); code != 200 {
		t.Fatalf("holding hot: %d", code)
	}
	rssBefore := rssBytes(t, pid)
	goroutinesBefore := metric(t, base, "go_goroutines")

	// 5,000 connections: half send nothing, half send part of a request
	// and stop (slowloris).
	addr := strings.TrimPrefix(base, "http://")
	conns := make([]net.Conn, 0, idle)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range idle {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if i%2 == 1 {
			fmt.Fprintf(c, "POST /v1/locks/hot/acquire HTTP/1.1\r\nHost: lockd\r\nX-Slow: ")
		}
		conns = append(conns, c)
	}

	// 2,000 long polls on one key, each on its own connection. They
	// arrive 100 at a time every 100 ms, and one that gets 503 (the store
	// too slow for a moment on a loaded machine) tries again, as clients do.
	tr := &http.Transport{MaxIdleConnsPerHost: -1}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	ctx, leave := context.WithCancel(context.Background())
	defer leave()
	var wg sync.WaitGroup
	var retried atomic.Int64
	rampStart := time.Now()
	for i := range waiters {
		if i%100 == 0 && i > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, "POST", base+"/v1/locks/hot/acquire", strings.NewReader(`{"wait_ms": 240000}`))
				resp, err := hc.Do(req)
				if err != nil {
					return // the client left
				}
				resp.Body.Close()
				if resp.StatusCode == http.StatusServiceUnavailable {
					retried.Add(1)
					time.Sleep(time.Second)
					continue
				}
				// A grant cannot happen: hot is held for 5 minutes.
				t.Errorf("a waiter got %d before its client left", resp.StatusCode)
				return
			}
		}()
	}
	eventually(t, 3*time.Minute, "2,000 waiters counted by lockd and queued in the store", func() (bool, string) {
		n := metric(t, base, "lockd_waiters")
		if n != waiters {
			return false, fmt.Sprintf("lockd_waiters %v, %d retries after 503", n, retried.Load())
		}
		_, st := get(t, base+"/v1/locks/hot")
		return st["waiters"] == float64(waiters), fmt.Sprintf("store: %v", st)
	})
	t.Logf("2,000 waiters in %v (%d retries after 503)", time.Since(rampStart).Round(time.Millisecond), retried.Load())
	if open := metric(t, base, "lockd_open_connections"); open < idle+waiters {
		t.Fatalf("lockd_open_connections %v, want the %d connections all open at once", open, idle+waiters)
	}

	// Everyone else is still served.
	quick := &http.Client{Timeout: 10 * time.Second}
	for _, probe := range []struct{ method, path, body string }{
		{"GET", "/healthz", ""},
		{"POST", "/v1/locks/elsewhere/acquire", `{"ttl_ms": 5000}`},
		{"GET", "/v1/locks/hot", ""},
	} {
		req, _ := http.NewRequest(probe.method, base+probe.path, strings.NewReader(probe.body))
		began := time.Now()
		resp, err := quick.Do(req)
		if err != nil {
			t.Fatalf("%s %s under load: %v", probe.method, probe.path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("%s %s under load: %d %s", probe.method, probe.path, resp.StatusCode, body)
		}
		if probe.path == "/v1/locks/hot" && !strings.Contains(string(body), fmt.Sprintf(`"waiters":%d`, waiters)) {
			t.Errorf("hot under load: %s, want %d waiters in the store", body, waiters)
		}
		t.Logf("%s %s with %d connections open: %v", probe.method, probe.path, idle+waiters, time.Since(began))
	}
	if code, body := post(t, base+"/v1/locks/hot/acquire", `{"wait_ms": 1000}`); code != 429 || body["code"] != "too_many_waiters" {
		t.Errorf("waiter %d: %d %v, want 429 too_many_waiters", waiters+1, code, body)
	}
	rssLoaded := rssBytes(t, pid)
	t.Logf("lockd RSS: %d MiB before, %d MiB with %d idle connections and %d waiters", rssBefore>>20, rssLoaded>>20, idle, waiters)
	if rssLoaded > rssBound {
		t.Errorf("lockd RSS %d MiB under load, want under %d MiB", rssLoaded>>20, rssBound>>20)
	}

	// lockd closes the half-sent connections (read-header-timeout): a read
	// on one ends.
	for _, c := range []net.Conn{conns[1], conns[idle-1]} {
		_ = c.SetReadDeadline(time.Now().Add(time.Minute))
		if _, err := bufio.NewReader(c).ReadByte(); err == nil {
			// A 408 answer is fine too; the connection must then end.
			if _, err := io.Copy(io.Discard, c); err != nil {
				t.Errorf("a half-sent connection was not closed by lockd: %v", err)
			}
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Errorf("a half-sent connection was still open after a minute")
		}
	}

	// The waiters' clients leave: lockd forgets them and the store's queue
	// empties.
	leave()
	wg.Wait()
	eventually(t, 2*time.Minute, "waiters gone after their clients left", func() (bool, string) {
		n := metric(t, base, "lockd_waiters")
		code, st := get(t, base+"/v1/locks/hot")
		return n == 0 && code == 200 && st["waiters"] == float64(0), fmt.Sprintf("lockd_waiters %v, store %v", n, st)
	})
	for _, c := range conns {
		c.Close()
	}
	tr.CloseIdleConnections()
	eventually(t, time.Minute, "goroutines back near where they started", func() (bool, string) {
		n := metric(t, base, "go_goroutines")
		return n < goroutinesBefore+100, fmt.Sprintf("%v goroutines, %v before", n, goroutinesBefore)
	})
	if st, _ := get(t, base+"/v1/locks/hot"); st != 200 {
		t.Fatalf("hot after the abuse: %d", st)
	}
}
