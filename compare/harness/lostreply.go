package harness

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

// The lost-replies scenario: a real TCP proxy (toxiproxy) between the client
// and lockd swallows the replies (a timeout toxic with 0 on the downstream
// only: the request reaches lockd, which grants, and the answer never comes
// back). The client gives up, the toxic is lifted, and the client retries
// once, as the Go client does:
//
//   - with the same Idempotency-Key: the retry must get the grant the lost
//     reply carried, so after the client's release the key is free. A key
//     still held then is an orphaned grant (want 0).
//   - with no key (a client that does not send one): the retry finds the
//     key held by its own lost grant, which nobody can release; the key is
//     blocked until that lease runs out. The keys blocked, and for how long,
//     are counted: what the header is for.

// CheckOrphanedGrants is the lost-replies scenario's check.
const CheckOrphanedGrants = "orphaned grants after lost replies (Idempotency-Key retries)"

// LostReplyResult is the lost-replies scenario on one backend.
type LostReplyResult struct {
	Rounds int     `json:"rounds"`
	TTLms  float64 `json:"ttl_ms"`
	// GiveUpMs is how long the client waited for each swallowed reply.
	GiveUpMs float64 `json:"give_up_ms"`
	// Keyed: retries with the same Idempotency-Key.
	Keyed LostReplyMode `json:"with_idempotency_key"`
	// Unkeyed: retries without one.
	Unkeyed    LostReplyMode `json:"without_idempotency_key"`
	Checks     []Check       `json:"checks,omitempty"`
	Pass       bool          `json:"pass"`
	Unmeasured string        `json:"unmeasured,omitempty"`
}

// LostReplyMode counts one way of retrying.
type LostReplyMode struct {
	// Lost: acquires whose reply the proxy swallowed (the client gave up).
	Lost int `json:"replies_lost"`
	// Recovered: retries that got the lost grant back (keyed mode).
	Recovered int `json:"retries_recovered_grant"`
	// Orphaned: keys still held by nobody's lease after the client's retry
	// and release.
	Orphaned int `json:"orphaned_grants"`
	// Blocked: keys the retry found held by the lost grant; BlockedMs is
	// how long each stayed taken, from the lost acquire's send to the first
	// grant to anyone.
	Blocked   int       `json:"keys_blocked"`
	BlockedMs []float64 `json:"blocked_ms,omitempty"`
	Errors    []string  `json:"errors,omitempty"`
}

// lostReplySizes: the TTL must be well above the client's patience, so that
// a lost grant is still alive when the retry comes.
func lostReplySizes(quick bool) (rounds int, ttl, giveUp time.Duration) {
	if quick {
		return 4, 2 * time.Second, 400 * time.Millisecond
	}
	return 12, 5 * time.Second, 500 * time.Millisecond
}

func runLostReplies(ctx context.Context, d *deployment, quick bool, skew time.Duration, b *bar) *LostReplyResult {
	return runLostRepliesWrapped(ctx, d, quick, skew, b.set, nil)
}

func runLostRepliesWrapped(ctx context.Context, d *deployment, quick bool, skew time.Duration, progress func(float64), wrap func(backend.Backend) backend.Backend) *LostReplyResult {
	rounds, ttl, giveUp := lostReplySizes(quick)
	res := &LostReplyResult{Rounds: rounds, TTLms: ms64(ttl), GiveUpMs: ms64(giveUp)}
	if lockdHandler == nil {
		res.Unmeasured = "lockd driven in process (-no-http): there is no reply on the wire to lose"
		return res
	}
	if progress == nil {
		progress = func(float64) {}
	}
	bk, err := d.newBackend(d.Addrs, nil)
	if err != nil {
		res.Unmeasured = "connect lockd to the store: " + err.Error()
		return res
	}
	if wrap != nil {
		bk = wrap(bk)
	}
	r, err := startLockd(bk)
	if err != nil {
		bk.Close()
		res.Unmeasured = "start lockd: " + err.Error()
		return res
	}
	defer r.stop()
	u, _ := url.Parse(r.url)
	px, err := newProxies([]string{u.Host})
	if err != nil {
		res.Unmeasured = "toxiproxy: " + err.Error()
		return res
	}
	defer px.close()
	through := "http://" + px.addrs()[0]
	direct := newHTTPLocker(r.url)
	defer direct.Close()

	run := func(keyed bool, m *LostReplyMode) {
		prefix := fmt.Sprintf("lost-%d-%t-", time.Now().UnixNano(), keyed)
		idems := make([]string, rounds)
		sent := make([]time.Time, rounds)
		lost := make([]bool, rounds)
		if err := px.addDown("swallow", "timeout", `{"timeout":0}`); err != nil {
			m.Errors = append(m.Errors, err.Error())
			return
		}
		var wg sync.WaitGroup
		for i := range rounds {
			if keyed {
				idems[i] = lease.NewID()
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				l := newHTTPLocker(through)
				defer l.Close()
				c, cancel := context.WithTimeout(ctx, giveUp)
				defer cancel()
				sent[i] = time.Now()
				g, err := l.acquireKeyed(c, prefix+fmt.Sprint(i), "client", ttl, 0, idems[i])
				if err == nil { // the reply got through after all
					_ = direct.Release(ctx, g)
					return
				}
				lost[i] = true
			}()
		}
		wg.Wait()
		px.remove("swallow")
		var mu sync.Mutex
		for i := range rounds {
			if !lost[i] {
				continue
			}
			m.Lost++
			wg.Add(1)
			go func() {
				defer wg.Done()
				key := prefix + fmt.Sprint(i)
				l := newHTTPLocker(through)
				defer l.Close()
				g, err := l.acquireKeyed(ctx, key, "client", ttl, 0, idems[i])
				if err == nil {
					if keyed {
						mu.Lock()
						m.Recovered++
						mu.Unlock()
					}
					if err := l.Release(ctx, g); err != nil {
						mu.Lock()
						m.Errors = append(m.Errors, "release: "+short(err))
						mu.Unlock()
					}
				} else if !errors.Is(err, backend.ErrHeld) {
					mu.Lock()
					m.Errors = append(m.Errors, "retry: "+short(err))
					mu.Unlock()
				}
				// Is the key free now? Anyone waiting gets it as soon as
				// it is; a lost grant frees it only when it runs out.
				other, perr := direct.Acquire(ctx, key, "someone-else", ttl, 0)
				held := errors.Is(perr, backend.ErrHeld)
				if held {
					other, perr = direct.Acquire(ctx, key, "someone-else", ttl, ttl+skew+2*time.Second)
				}
				freeAt := time.Now()
				if perr == nil {
					_ = direct.Release(ctx, other)
				}
				mu.Lock()
				defer mu.Unlock()
				switch {
				case perr != nil:
					m.Errors = append(m.Errors, "probe: "+short(perr))
					m.Orphaned++
				case held && keyed:
					m.Orphaned++
				case held:
					m.Blocked++
					m.BlockedMs = append(m.BlockedMs, ms64(freeAt.Sub(sent[i])))
				}
			}()
		}
		wg.Wait()
	}
	run(true, &res.Keyed)
	progress(0.5)
	run(false, &res.Unkeyed)
	progress(1)
	evalLostReplyChecks(res)
	return res
}

func evalLostReplyChecks(res *LostReplyResult) {
	c := Check{Name: CheckOrphanedGrants, Threshold: "0 keys held after the keyed retry and its release",
		Got: fmt.Sprintf("%d of %d lost replies", res.Keyed.Orphaned, res.Keyed.Lost), Applies: res.Keyed.Lost > 0,
		Pass: res.Keyed.Orphaned == 0}
	if !c.Applies {
		c.NotApplicable = "no reply was lost (every acquire's answer got through the proxy)"
	}
	res.Checks = []Check{c}
	res.Pass = c.Pass
}
