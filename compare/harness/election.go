package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/lockd/lockd/backend"
)

// Election failover: a leader in a process of its own holds leadership
// (over lockd's HTTP API, or with etcd's concurrency.Election), a second
// candidate process waits in line, and the leader is SIGKILLed (no
// resign). Measured from the kill: when an observer sees no_leader, when
// the next leader's campaign returns, and when the observer sees it. The
// double-leader check: the next leader must not be elected while the
// killed one was still leader by its own reckoning (the send of its last
// successful campaign or renew + TTL, the client rule; etcd's election
// keeps no such deadline, so there the kill ends it), and its term must be
// higher.
//
// The candidate processes are this same executable (compare, or a test
// binary) re-executed with electionChildEnv set: init runs the child and
// exits before anything else.

const electionChildEnv = "LOCKD_COMPARE_ELECTION_CHILD"

func init() {
	if mode := os.Getenv(electionChildEnv); mode != "" {
		os.Exit(electionChild(mode, os.Getenv("LOCKD_COMPARE_ELECTION_TARGET"), os.Getenv("LOCKD_COMPARE_ELECTION_NAME"),
			os.Getenv("LOCKD_COMPARE_ELECTION_OWNER")))
	}
}

// electionTTL is the leaders' TTL: etcd sessions count in whole seconds.
const electionTTL = 2 * time.Second

// ViaEtcdElection names etcd's own election in the report.
const ViaEtcdElection = "etcd concurrency.Election"

// ElectionRound is one SIGKILL of a leader.
type ElectionRound struct {
	LeaderTerm uint64 `json:"leader_term"`
	NextTerm   uint64 `json:"next_term"`
	// NoLeaderMs: kill → the observer's no_leader; -1 when the observer
	// never says so (etcd's Observe is silent on deletion).
	NoLeaderMs float64 `json:"no_leader_ms"`
	ElectedMs  float64 `json:"next_elected_ms"`
	ObservedMs float64 `json:"next_observed_ms"`
	// DoubleLeader: the next leader was elected before the killed one
	// stopped.
	DoubleLeader bool   `json:"double_leader,omitempty"`
	Error        string `json:"error,omitempty"`
}

// ElectionCell is one way of electing on one backend.
type ElectionCell struct {
	Via        string          `json:"via"`
	TTLms      float64         `json:"ttl_ms"`
	Rounds     []ElectionRound `json:"rounds"`
	Checks     []Check         `json:"checks,omitempty"`
	Pass       bool            `json:"pass"`
	Unmeasured string          `json:"unmeasured,omitempty"`
}

// ElectionResult is the election-failover scenario on one backend.
type ElectionResult struct {
	Cells      []ElectionCell `json:"cells,omitempty"`
	Unmeasured string         `json:"unmeasured,omitempty"`
}

// Election check names.
const (
	CheckDoubleLeader = "double leader"
	CheckTermOrder    = "term order"
)

func electionRounds(quick bool) int {
	if quick {
		return 1
	}
	return 3
}

func electionEstimate(t target, quick bool) time.Duration {
	// Per round: two processes start, the TTL + skew runs out, the next
	// leader is seen; twice (lockd and etcd's own) on etcd.
	cells := 1
	if isEtcd(t) {
		cells = 2
	}
	return time.Duration(cells*electionRounds(quick)) * (electionTTL + 4*time.Second)
}

func isEtcd(t target) bool { return t.Name == "etcd" || t.Name == "etcd-ext" }

// runElection measures election failover on d: through lockd's HTTP API
// when its backend is a backend.Elector, and with etcd's own election when
// etcd is true.
func runElection(ctx context.Context, d *deployment, etcd, quick bool, skew time.Duration, progress func(float64)) *ElectionResult {
	res := &ElectionResult{}
	rounds := electionRounds(quick)
	if d.noBackend != "" {
		res.Unmeasured = d.noBackend
		return res
	}
	b, err := d.newBackend(d.Addrs, nil)
	if err != nil {
		res.Unmeasured = err.Error()
		return res
	}
	el, ok := b.(backend.Elector)
	if !ok {
		b.Close()
		res.Unmeasured = "lockd's backend on this store does not implement elections (backend.Elector)"
	} else {
		r, err := startLockdAs(b, true)
		if err != nil || r.srv == nil {
			b.Close()
			res.Unmeasured = fmt.Sprintf("lockd over HTTP could not start: %v", err)
			return res
		}
		cell := ElectionCell{Via: ViaHTTP, TTLms: ms64(electionTTL)}
		for i := range rounds {
			progress(float64(i) / float64(rounds*2))
			cell.Rounds = append(cell.Rounds, lockdFailover(ctx, r.url, el.Elections(), fmt.Sprintf("compare-election-%d-%d", time.Now().UnixNano(), i)))
		}
		r.stop()
		evalElection(&cell, skew)
		res.Cells = append(res.Cells, cell)
	}
	if etcd {
		cell := ElectionCell{Via: ViaEtcdElection, TTLms: ms64(electionTTL)}
		for i := range rounds {
			progress(float64(rounds+i) / float64(rounds*2))
			cell.Rounds = append(cell.Rounds, etcdFailover(ctx, d.Addrs, fmt.Sprintf("/compare-election/%d-%d", time.Now().UnixNano(), i)))
		}
		evalElection(&cell, skew)
		res.Cells = append(res.Cells, cell)
	}
	return res
}

// evalElection fills the cell's checks: no double leader, terms rising,
// and every round measured.
func evalElection(c *ElectionCell, skew time.Duration) {
	var doubles, order, failed int
	var first string
	for _, r := range c.Rounds {
		switch {
		case r.Error != "":
			failed++
			if first == "" {
				first = r.Error
			}
		default:
			if r.DoubleLeader {
				doubles++
			}
			if r.NextTerm <= r.LeaderTerm {
				order++
			}
		}
	}
	c.Checks = []Check{
		{Name: CheckDoubleLeader, Threshold: "0 leaders elected while the previous one was still valid", Got: fmt.Sprintf("%d of %d rounds", doubles, len(c.Rounds)), Applies: true, Pass: doubles == 0},
		{Name: CheckTermOrder, Threshold: "every next leader's term above the killed one's", Got: fmt.Sprintf("%d of %d rounds not above", order, len(c.Rounds)), Applies: true, Pass: order == 0},
	}
	measured := Check{Name: "failover measured", Threshold: "every round elects the next leader", Got: fmt.Sprintf("%d of %d rounds failed", failed, len(c.Rounds)), Applies: true, Pass: failed == 0}
	if first != "" {
		measured.Got += ": " + first
	}
	c.Checks = append(c.Checks, measured)
	c.Pass = true
	for _, ch := range c.Checks {
		c.Pass = c.Pass && ch.Pass
	}
}

// child is a candidate process: its lines on stdout ("elected TERM
// UNIXNANO", "error ...") arrive on lines, each with the time it was read.
type child struct {
	cmd   *exec.Cmd
	lines chan childLine
	// valid is the child's own deadline (send of its last successful
	// campaign or renew + TTL), zero when it keeps none (etcd's election).
	valid time.Time
}

func (c *child) noteValid(ns string) {
	if n, err := strconv.ParseInt(ns, 10, 64); err == nil && time.Unix(0, n).After(c.valid) {
		c.valid = time.Unix(0, n)
	}
}

// stopped SIGKILLs the child and reads what it wrote before it died: it
// returns when the child stopped being leader by its own reckoning (its
// last deadline, or the kill when it keeps none).
func (c *child) stopped(killed time.Time) time.Time {
	_ = c.cmd.Process.Kill()
	for l := range c.lines {
		if f := strings.Fields(l.text); len(f) == 2 && f[0] == "valid" {
			c.noteValid(f[1])
		}
	}
	if c.valid.IsZero() {
		return killed
	}
	if end := killed.Add(electionTTL); end.Before(c.valid) {
		return end
	}
	return c.valid
}

type childLine struct {
	text string
	at   time.Time
}

func startChild(mode, target, name, owner string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), electionChildEnv+"="+mode, "LOCKD_COMPARE_ELECTION_TARGET="+target,
		"LOCKD_COMPARE_ELECTION_NAME="+name, "LOCKD_COMPARE_ELECTION_OWNER="+owner)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, lines: make(chan childLine, 16)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			c.lines <- childLine{text: sc.Text(), at: time.Now()}
		}
		close(c.lines)
	}()
	return c, nil
}

// kill SIGKILLs the child and reaps it.
func (c *child) kill() {
	_ = c.cmd.Process.Kill()
	_ = c.cmd.Wait()
	for range c.lines {
	}
}

// elected waits for the child's "elected" line: its term and when its
// campaign returned (the child's clock: the same machine's).
func (c *child) elected(ctx context.Context, within time.Duration) (term uint64, at time.Time, err error) {
	t := time.NewTimer(within)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return 0, time.Time{}, ctx.Err()
		case <-t.C:
			return 0, time.Time{}, fmt.Errorf("not elected within %s", within)
		case l, ok := <-c.lines:
			if !ok {
				return 0, time.Time{}, errors.New("candidate process exited")
			}
			f := strings.Fields(l.text)
			if len(f) >= 3 && f[0] == "elected" {
				term, _ = strconv.ParseUint(f[1], 10, 64)
				ns, _ := strconv.ParseInt(f[2], 10, 64)
				if len(f) == 4 {
					c.noteValid(f[3])
				}
				return term, time.Unix(0, ns), nil
			}
			if len(f) == 2 && f[0] == "valid" {
				c.noteValid(f[1])
			}
			if len(f) > 0 && f[0] == "error" {
				return 0, time.Time{}, errors.New(l.text)
			}
		}
	}
}

// obsEvent is one event an observer saw, when it arrived.
type obsEvent struct {
	noLeader bool
	term     uint64
	at       time.Time
}

// failover runs one round: leader A elected, candidate B in line, A
// SIGKILLed; events are the observer's stream.
func failover(ctx context.Context, mode, target, name string, events <-chan obsEvent, inLine func() bool) ElectionRound {
	var r ElectionRound
	a, err := startChild(mode, target, name, "leader-a")
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer a.kill()
	ta, _, err := a.elected(ctx, 30*time.Second)
	if err != nil {
		r.Error = "first leader: " + err.Error()
		return r
	}
	r.LeaderTerm = ta
	b, err := startChild(mode, target, name, "leader-b")
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer b.kill()
	// B must be in line behind A before the kill. A broken elector makes
	// it leader at once instead: a double leader.
	for deadline := time.Now().Add(20 * time.Second); !inLine(); {
		if time.Now().After(deadline) {
			r.Error = "the second candidate never got in line"
			return r
		}
		if tb, bAt, err := b.elected(ctx, 20*time.Millisecond); err == nil {
			r.NextTerm, r.DoubleLeader = tb, true
			r.ElectedMs = ms64(bAt.Sub(time.Now()))
			r.NoLeaderMs, r.ObservedMs = -1, -1
			return r
		} else if !strings.HasPrefix(err.Error(), "not elected within") {
			r.Error = "second candidate: " + err.Error()
			return r
		}
	}
	// Drain what the observer saw so far; from now on only the failover.
	for drained := false; !drained; {
		select {
		case <-events:
		default:
			drained = true
		}
	}
	killed := time.Now()
	aEnd := a.stopped(killed)
	tb, bAt, err := b.elected(ctx, electionTTL+30*time.Second)
	if err != nil {
		r.Error = "next leader: " + err.Error()
		return r
	}
	r.NextTerm, r.ElectedMs = tb, ms64(bAt.Sub(killed))
	// Two valid leaderships at once: B leads before A's own deadline.
	r.DoubleLeader = bAt.Before(aEnd)
	r.NoLeaderMs, r.ObservedMs = -1, -1
	wait := time.NewTimer(10 * time.Second)
	defer wait.Stop()
	for r.ObservedMs < 0 {
		select {
		case ev := <-events:
			switch {
			case ev.noLeader && r.NoLeaderMs < 0:
				r.NoLeaderMs = ms64(ev.at.Sub(killed))
			case !ev.noLeader && ev.term == tb:
				r.ObservedMs = ms64(ev.at.Sub(killed))
			}
		case <-wait.C:
			r.Error = "the observer never saw the next leader"
			return r
		case <-ctx.Done():
			r.Error = ctx.Err().Error()
			return r
		}
	}
	return r
}

// lockdFailover: candidates campaign over lockd's HTTP API; the observer
// reads GET /v1/elections/{name}/observe.
func lockdFailover(ctx context.Context, base string, el backend.Elections, name string) ElectionRound {
	octx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan obsEvent, 64)
	if err := observeHTTP(octx, base, name, events); err != nil {
		return ElectionRound{Error: "observe: " + err.Error()}
	}
	inLine := func() bool {
		st, err := el.Leader(ctx, name)
		return err == nil && st.Candidates >= 1
	}
	return failover(ctx, "http", base, name, events, inLine)
}

func observeHTTP(ctx context.Context, base, name string, events chan<- obsEvent) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/elections/"+url.PathEscape(name)+"/observe", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	go func() {
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		var event string
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				event = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				var d struct {
					Term uint64 `json:"term"`
				}
				_ = json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &d)
				ev := obsEvent{at: time.Now(), term: d.Term, noLeader: event == "no_leader"}
				if event == "leader" || event == "no_leader" {
					select {
					case events <- ev:
					default:
					}
				}
			}
		}
	}()
	return nil
}

// etcdFailover: candidates use etcd's concurrency.Election; the observer
// is Election.Observe, which reports leaders only.
func etcdFailover(ctx context.Context, endpoints []string, name string) ElectionRound {
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return ElectionRound{Error: err.Error()}
	}
	defer cli.Close()
	octx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan obsEvent, 64)
	obs, err := concurrency.NewSession(cli, concurrency.WithTTL(60))
	if err != nil {
		return ElectionRound{Error: err.Error()}
	}
	defer obs.Close()
	go func() {
		for resp := range concurrency.NewElection(obs, name).Observe(octx) {
			if len(resp.Kvs) == 0 {
				continue
			}
			select {
			case events <- obsEvent{term: uint64(resp.Kvs[0].CreateRevision), at: time.Now()}:
			default:
			}
		}
	}()
	inLine := func() bool {
		r, err := cli.Get(ctx, name+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && r.Count >= 2
	}
	return failover(ctx, "etcd", strings.Join(endpoints, ","), name, events, inLine)
}

// electionChild is a candidate process: it campaigns, prints "elected
// TERM UNIXNANO" when it leads, and keeps its leadership alive until it is
// killed. Its exit code is 1 on any error.
func electionChild(mode, target, name, owner string) int {
	ctx := context.Background()
	fail := func(err error) int { fmt.Printf("error %v\n", err); return 1 }
	switch mode {
	case "http":
		body, _ := json.Marshal(map[string]any{"ttl_ms": electionTTL.Milliseconds(), "wait_ms": 60000, "owner": owner, "value": owner})
		base := target + "/v1/elections/" + url.PathEscape(name)
		sent := time.Now()
		resp, err := http.Post(base+"/campaign", "application/json", bytes.NewReader(body))
		if err != nil {
			return fail(err)
		}
		var g struct {
			LeaseID string `json:"lease_id"`
			Term    uint64 `json:"term"`
		}
		err = json.NewDecoder(resp.Body).Decode(&g)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			return fail(fmt.Errorf("campaign: HTTP %d %v", resp.StatusCode, err))
		}
		fmt.Printf("elected %d %d %d\n", g.Term, time.Now().UnixNano(), sent.Add(electionTTL).UnixNano())
		rb, _ := json.Marshal(map[string]any{"lease_id": g.LeaseID})
		for {
			time.Sleep(electionTTL / 4)
			sent := time.Now()
			resp, err := http.Post(base+"/renew", "application/json", bytes.NewReader(rb))
			if err != nil {
				continue
			}
			resp.Body.Close()
			switch resp.StatusCode {
			case http.StatusOK:
				fmt.Printf("valid %d\n", sent.Add(electionTTL).UnixNano())
			case http.StatusGone:
				return fail(errors.New("leadership lost"))
			}
		}
	case "etcd":
		cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(target, ","), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			return fail(err)
		}
		s, err := concurrency.NewSession(cli, concurrency.WithTTL(int(electionTTL/time.Second)))
		if err != nil {
			return fail(err)
		}
		e := concurrency.NewElection(s, name)
		if err := e.Campaign(ctx, owner); err != nil {
			return fail(err)
		}
		fmt.Printf("elected %d %d\n", e.Rev(), time.Now().UnixNano())
		<-s.Done()
		return fail(errors.New("session lost"))
	}
	return fail(fmt.Errorf("unknown mode %q", mode))
}

// electionSummary is one line per cell for the progress output.
func electionStatus(r *ElectionResult) string {
	if r.Unmeasured != "" && len(r.Cells) == 0 {
		return "not measured: " + r.Unmeasured
	}
	var parts []string
	for _, c := range r.Cells {
		verdict := "PASS"
		if !c.Pass {
			verdict = "FAIL"
		}
		var el []float64
		for _, rd := range c.Rounds {
			if rd.Error == "" {
				el = append(el, rd.ElectedMs)
			}
		}
		sort.Float64s(el)
		med := "—"
		if len(el) > 0 {
			med = fmtDur(el[len(el)/2])
		}
		parts = append(parts, fmt.Sprintf("%s %s: next leader elected %s after the kill (median of %d)", c.Via, verdict, med, len(c.Rounds)))
	}
	return strings.Join(parts, "; ")
}
