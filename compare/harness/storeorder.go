package harness

// FIFO by the store's own order: every waiter gets a place in line from the
// store when it queues (etcd: the create revision of its queue entry;
// ZooKeeper: the czxid of its sequential node; Redis: the RPUSH onto the
// key's queue list), and a grant is out of order when its holder's place is
// below that of a grant made before it on the same key: a waiter the store
// had put earlier in line was passed over. Client timestamps play no part.
//
// On etcd and ZooKeeper the fencing token is that place (lockd's backends
// take it from the queue entry made at enqueue), so the grants' tokens in
// grant order are the measurement. On Redis the token is INCR'd at the
// grant, so the place is read from the store itself: a MONITOR connection
// sees every command in the order Redis ran it, the commands inside
// scripts included.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// StoreOrder counts grants made out of the order the store queued their
// holders in.
type StoreOrder struct {
	Grants     int64  `json:"grants"`
	OutOfOrder int64  `json:"out_of_order_grants"`
	By         string `json:"by"`
	Unmeasured string `json:"unmeasured,omitempty"`
}

// orderedGrant is one grant: its key (in the store's naming or the
// client's) and its holder's place in the store's line.
type orderedGrant struct {
	key string
	pos uint64
}

// outOfOrder counts, key by key, the grants (in grant order) whose place is
// below the highest place granted before them on that key.
func outOfOrder(grants []orderedGrant) (n int64) {
	top := map[string]uint64{}
	for _, g := range grants {
		if t, ok := top[g.key]; ok && g.pos < t {
			n++
			continue
		}
		top[g.key] = g.pos
	}
	return n
}

// tokenGrant is a grant seen by a client: on a store whose token is the
// place in line, enough to count.
type tokenGrant struct {
	key     string
	token   uint64
	granted time.Time
}

// tokenOrder counts out-of-order grants among grants seen by clients, by
// their tokens. A key's grants are put in grant order by when they
// returned: the next grant on a key cannot return before the previous
// holder's release, which it sends only after its own grant returned.
func tokenOrder(gs []tokenGrant) (grants, out int64) {
	sort.SliceStable(gs, func(i, j int) bool { return gs[i].granted.Before(gs[j].granted) })
	og := make([]orderedGrant, len(gs))
	for i, g := range gs {
		og[i] = orderedGrant{key: g.key, pos: g.token}
	}
	return int64(len(og)), outOfOrder(og)
}

// orderProbe reads the store's own order while a cell runs; stop ends it
// and returns the grants it saw, in the order the store made them.
type orderProbe interface {
	stop() ([]orderedGrant, error)
}

// storeOrderOf is the cell's count: by the probe when the store needs one,
// else by the clients' tokens.
func storeOrderOf(d *deployment, p orderProbe, perr error, gs []tokenGrant) *StoreOrder {
	if d.noFIFO != "" {
		return nil
	}
	if d.watchOrder == nil {
		n, out := tokenOrder(gs)
		return &StoreOrder{Grants: n, OutOfOrder: out, By: "fencing token = the store's place in line (assigned at enqueue)"}
	}
	so := &StoreOrder{By: d.orderHow}
	if perr != nil {
		so.Unmeasured = perr.Error()
		return so
	}
	og, err := p.stop()
	if err != nil {
		so.Unmeasured = err.Error()
		return so
	}
	so.Grants, so.OutOfOrder = int64(len(og)), outOfOrder(og)
	return so
}

// startOrder starts d's probe, when it has one.
func startOrder(d *deployment) (orderProbe, error) {
	if d.watchOrder == nil || d.noFIFO != "" {
		return nil, nil
	}
	return d.watchOrder()
}

// redisMonitor is the Redis backend's probe: a MONITOR connection. It
// follows acquire.lua's commands: RPUSH of a waiter id onto <base>q gives
// the waiter its place; HSET <base>lock id <lease> is a grant, to the
// waiter the script call named (its fourth argument, the first the lease
// id), or to a caller granted at once without queueing, whose place is the
// next one (nobody was in line before it).
type redisMonitor struct {
	conn net.Conn
	done chan struct{}

	mu     sync.Mutex
	grants []orderedGrant
	err    error
}

const redisOrderHow = "a Redis MONITOR connection: each waiter's place is its RPUSH onto the key's queue list, in the order Redis ran it"

func startRedisMonitor(addr string) (orderProbe, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte("MONITOR\r\n")); err != nil {
		c.Close()
		return nil, err
	}
	m := &redisMonitor{conn: c, done: make(chan struct{})}
	r := bufio.NewReaderSize(c, 1<<20)
	line, err := r.ReadBytes('\n')
	if err != nil || !bytes.HasPrefix(line, []byte("+OK")) {
		c.Close()
		return nil, fmt.Errorf("redis MONITOR: %q %v", line, err)
	}
	go m.read(r)
	return m, nil
}

func (m *redisMonitor) read(r *bufio.Reader) {
	defer close(m.done)
	f := newMonitorFollower()
	for {
		line, err := r.ReadSlice('\n')
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return // stop closed the connection
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			// A huge command (not one of acquire's): skip the rest of it.
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = r.ReadSlice('\n')
			}
			continue
		}
		if g, ok := f.line(line); ok {
			m.mu.Lock()
			m.grants = append(m.grants, g)
			m.mu.Unlock()
		}
	}
}

func (m *redisMonitor) stop() ([]orderedGrant, error) {
	// Let the last commands of the cell arrive.
	time.Sleep(100 * time.Millisecond)
	m.conn.Close()
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.grants, m.err
}

// monitorFollower turns MONITOR lines into grants with places.
type monitorFollower struct {
	lease, waiter string // of the script call being run
	next          map[string]uint64
	place         map[string]map[string]uint64 // base → waiter → place
}

func newMonitorFollower() *monitorFollower {
	return &monitorFollower{next: map[string]uint64{}, place: map[string]map[string]uint64{}}
}

func (f *monitorFollower) line(line []byte) (orderedGrant, bool) {
	// Cheap tests first: most lines are none of the three.
	var kind int
	switch {
	case bytes.Contains(line, []byte(`] "evalsha" `)) || bytes.Contains(line, []byte(`] "EVALSHA" `)) ||
		bytes.Contains(line, []byte(`] "eval" `)) || bytes.Contains(line, []byte(`] "EVAL" `)):
		kind = 1
	case bytes.Contains(line, []byte(`[0 lua] "RPUSH" `)):
		kind = 2
	case bytes.Contains(line, []byte(`[0 lua] "HSET" `)):
		kind = 3
	default:
		return orderedGrant{}, false
	}
	i := bytes.Index(line, []byte("] "))
	args := monitorArgs(string(line[i+2:]))
	switch kind {
	case 1:
		f.lease, f.waiter = "", ""
		if len(args) < 3 {
			return orderedGrant{}, false
		}
		nk, err := strconv.Atoi(args[2])
		if err != nil || len(args) < 3+nk+4 {
			return orderedGrant{}, false
		}
		argv := args[3+nk:]
		f.lease, f.waiter = argv[0], argv[3]
	case 2:
		if len(args) != 3 || !strings.HasSuffix(args[1], "q") {
			return orderedGrant{}, false
		}
		base := strings.TrimSuffix(args[1], "q")
		if f.place[base] == nil {
			f.place[base] = map[string]uint64{}
		}
		f.next[base]++
		f.place[base][args[2]] = f.next[base]
	case 3:
		if len(args) < 4 || !strings.HasSuffix(args[1], "lock") || args[2] != "id" || args[3] != f.lease {
			return orderedGrant{}, false
		}
		base := strings.TrimSuffix(args[1], "lock")
		pos, ok := f.place[base][f.waiter]
		if f.waiter == "" || !ok {
			f.next[base]++
			pos = f.next[base]
		}
		delete(f.place[base], f.waiter)
		return orderedGrant{key: base, pos: pos}, true
	}
	return orderedGrant{}, false
}

// monitorArgs splits a MONITOR line's command into its arguments: each is
// in double quotes, with \" \\ \n \r \t \a \b and \xHH escapes.
func monitorArgs(s string) []string {
	var out []string
	for {
		i := strings.IndexByte(s, '"')
		if i < 0 {
			return out
		}
		s = s[i+1:]
		var b strings.Builder
		for len(s) > 0 && s[0] != '"' {
			if s[0] == '\\' && len(s) > 1 {
				switch s[1] {
				case 'n':
					b.WriteByte('\n')
				case 'r':
					b.WriteByte('\r')
				case 't':
					b.WriteByte('\t')
				case 'a':
					b.WriteByte('\a')
				case 'b':
					b.WriteByte('\b')
				case 'x':
					if len(s) >= 4 {
						if v, err := strconv.ParseUint(s[2:4], 16, 8); err == nil {
							b.WriteByte(byte(v))
							s = s[4:]
							continue
						}
					}
					b.WriteByte('x')
				default:
					b.WriteByte(s[1])
				}
				s = s[2:]
				continue
			}
			b.WriteByte(s[0])
			s = s[1:]
		}
		out = append(out, b.String())
		if len(s) == 0 {
			return out
		}
		s = s[1:]
	}
}
