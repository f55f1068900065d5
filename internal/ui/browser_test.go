package ui_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/lockd/lockd/internal/lockdtest"
	"github.com/lockd/lockd/internal/testserver"
)

func TestMain(m *testing.M) { lockdtest.Main(m) }

// liveBound is how long the page may take to show a change. The issue asks
// for one second (the page refreshes every second); the bound leaves room
// for a shared, busy two-core machine, and each test logs what it measured.
const liveBound = 3 * time.Second

// browser is one headless Chromium tab.
type browser struct {
	t   *testing.T
	ctx context.Context

	mu     sync.Mutex
	thrown []string // uncaught exceptions in the page
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	path := testserver.Chromium(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox, // tests run as root in CI containers
		chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	b := &browser{t: t, ctx: ctx}
	// The first Run starts the browser; its context must not time out.
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium (%s): %v", path, err)
	}
	go func() {
		for ev, err := range chromedp.Events(ctx, runtime.ExceptionThrown) {
			if err != nil {
				return
			}
			b.mu.Lock()
			b.thrown = append(b.thrown, (&chromedp.ExceptionError{ExceptionDetails: ev.ExceptionDetails}).Error())
			b.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, e := range b.thrown {
			t.Errorf("uncaught in the page: %s", e)
		}
	})
	return b
}

func (b *browser) do(steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("browser: %v", err)
	}
}

func eval[T any](b *browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// waitFor polls the page until the JavaScript condition is true, and
// returns how long that took; it fails the test after within.
func (b *browser) waitFor(what, cond string, within time.Duration) time.Duration {
	b.t.Helper()
	start := time.Now()
	for {
		if eval[bool](b, "!!("+cond+")") {
			return time.Since(start)
		}
		if time.Since(start) > within {
			b.t.Fatalf("after %v the page does not show %s\n(%s)\npage text:\n%s", within, what, cond,
				eval[string](b, "document.body.innerText"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// html is everything the page holds, to check what it must never show.
func (b *browser) html() string {
	b.t.Helper()
	return eval[string](b, "document.documentElement.outerHTML + JSON.stringify(Object.assign({}, sessionStorage))")
}

// visible is true when the element with this id takes up room on the page
// (the hidden attribute alone can lose to a display rule).
func visible(id string) string {
	return fmt.Sprintf(`(e => !!e && e.getClientRects().length > 0 && getComputedStyle(e).visibility !== 'hidden')(document.getElementById(%q))`, id)
}

func row(key string) string {
	return fmt.Sprintf(`document.querySelector('#locks tbody tr[data-key=%q]')`, key)
}

// rowShows is true when key's row has this owner, token and waiter count.
func rowShows(key, owner string, token uint64, waiters string) string {
	return fmt.Sprintf(`(r => r && r.querySelector('td:nth-child(2)').textContent === %q && r.querySelector('.token').textContent === %q && r.querySelector('.waiters').textContent === %q)(%s)`,
		owner, fmt.Sprint(token), waiters, row(key))
}

type grant struct {
	LeaseID   string `json:"lease_id"`
	Token     uint64 `json:"token"`
	Owner     string `json:"owner"`
	ExpiresAt string `json:"expires_at"`
}

func call(t *testing.T, base, bearer, path string, body any) (int, []byte) {
	t.Helper()
	data, _ := json.Marshal(body)
	req, err := http.NewRequest(http.MethodPost, base+path, bytes.NewReader(data))
	if err != nil {
		t.Error(err)
		return 0, nil
	}
	req.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Errorf("POST %s: %v", path, err)
		return 0, nil
	}
	defer res.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(res.Body)
	return res.StatusCode, buf.Bytes()
}

// acquire takes key through the API (t.Error, not Fatal: it runs in
// goroutines too).
func acquire(t *testing.T, base, bearer, key, owner string, ttl, wait time.Duration) grant {
	t.Helper()
	code, body := call(t, base, bearer, "/v1/locks/"+key+"/acquire",
		map[string]any{"owner": owner, "ttl_ms": ttl.Milliseconds(), "wait_ms": wait.Milliseconds()})
	var g grant
	if code != http.StatusOK || json.Unmarshal(body, &g) != nil {
		t.Errorf("acquire %s: %d %s", key, code, body)
	}
	return g
}

func release(t *testing.T, base, bearer, key string, g grant) {
	t.Helper()
	if code, body := call(t, base, bearer, "/v1/locks/"+key+"/release", map[string]any{"lease_id": g.LeaseID}); code != http.StatusNoContent {
		t.Fatalf("release %s: %d %s", key, code, body)
	}
}

// The console follows a real lockd on embedded etcd: grants, a waiter, a
// release and an unseen expiry show up on their own, lease ids never do, and
// the page reads at 320 px and at 4K, and from the keyboard.
func TestConsoleInBrowser(t *testing.T) {
	srv := lockdtest.Start(t, nil)
	b := newBrowser(t)
	b.do(chromedp.Navigate(srv.URL + "/ui/"))
	b.waitFor("the no-auth banner", visible("banner")+` && document.getElementById('banner').textContent.includes('No authentication')`, 30*time.Second)
	b.waitFor("the locks view", visible("view-locks"), 10*time.Second)
	if eval[bool](b, visible("token-form")) {
		t.Errorf("a lockd without --auth-file shows the token form")
	}

	// Acquire → the row, with owner and token.
	alice := acquire(t, srv.URL, "", "console:a", "alice", 60*time.Second, 0)
	took := b.waitFor("alice's row", rowShows("console:a", "alice", alice.Token, "0"), liveBound)
	t.Logf("acquire → row shown: %v", took)

	// A second client waits → waiter count 1.
	bobCh := make(chan grant, 1)
	go func() { bobCh <- acquire(t, srv.URL, "", "console:a", "bob", 60*time.Second, 60*time.Second) }()
	took = b.waitFor("one waiter", rowShows("console:a", "alice", alice.Token, "1"), liveBound)
	t.Logf("waiter queued → count 1 shown: %v", took)

	// Release → the waiter holds it, then release again → the row goes.
	release(t, srv.URL, "", "console:a", alice)
	bob := <-bobCh
	if bob.Token <= alice.Token {
		t.Fatalf("bob's token %d is not above alice's %d", bob.Token, alice.Token)
	}
	took = b.waitFor("bob holding after alice's release", rowShows("console:a", "bob", bob.Token, "0"), liveBound)
	t.Logf("release → next holder shown: %v", took)
	release(t, srv.URL, "", "console:a", bob)
	took = b.waitFor("the row gone after bob's release", "!"+row("console:a"), liveBound)
	t.Logf("release → row gone: %v", took)

	// A lease nobody releases disappears by itself once it expired (plus
	// the declared clock skew, 1 s by default), with no API call from here.
	ghost := acquire(t, srv.URL, "", "console:ghost", "ghost", 2*time.Second, 0)
	b.waitFor("the ghost's row", rowShows("console:ghost", "ghost", ghost.Token, "0"), liveBound)
	expires, err := time.Parse(time.RFC3339Nano, ghost.ExpiresAt)
	if err != nil {
		t.Fatalf("expires_at %q: %v", ghost.ExpiresAt, err)
	}
	b.waitFor("the ghost's row gone after its expiry", "!"+row("console:ghost"), time.Until(expires)+time.Second+liveBound)
	t.Logf("expiry → row gone %v after expires_at (the server frees it after expires_at + 1 s max skew)", time.Since(expires).Round(time.Millisecond))

	for _, g := range []grant{alice, bob, ghost} {
		if strings.Contains(b.html(), g.LeaseID) {
			t.Errorf("the page shows lease id %s of %s", g.LeaseID, g.Owner)
		}
	}

	// A few locks to look at, one with a key too long for a phone's width.
	long := "jobs:nightly-backup-of-the-customer-database-eu-west-1-0123456789"
	held := map[string]grant{}
	for _, k := range []struct{ key, owner string }{{"console:b", "deploy-bot@ci-7"}, {"db:migrate", "migrator-2"}, {long, "backup-cron"}} {
		held[k.key] = acquire(t, srv.URL, "", k.key, k.owner, 90*time.Second, 0)
	}
	go func() { acquire(t, srv.URL, "", "db:migrate", "migrator-3", 30*time.Second, 20*time.Second) }()
	b.waitFor("the waiting migrator", rowShows("db:migrate", "migrator-2", held["db:migrate"].Token, "1"), liveBound)
	b.waitFor("the long key", row(long), liveBound)

	b.waitFor("every countdown running", `[...document.querySelectorAll('#locks tbody .left')].every(e => / s$/.test(e.textContent))`, liveBound)
	shot, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	path := os.Getenv("LOCKD_UI_SCREENSHOT")
	if path == "" {
		path = filepath.Join(t.ArtifactDir(), "console.png")
	}
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", path, len(shot))

	// 320 px: no horizontal scroll, every row still there.
	noScroll := `document.documentElement.scrollWidth <= document.documentElement.clientWidth`
	b.do(chromedp.EmulateViewport(320, 800))
	b.waitFor("the page without horizontal scroll at 320 px", noScroll+` && innerWidth === 320 && document.querySelectorAll('#locks tbody tr').length === 3`, liveBound)
	// 4K: still no horizontal scroll, and the text grows.
	b.do(chromedp.EmulateViewport(3840, 2160))
	b.waitFor("bigger text and no horizontal scroll at 4K", noScroll+` && innerWidth === 3840 && parseFloat(getComputedStyle(document.documentElement).fontSize) >= 24`, liveBound)
	b.do(chromedp.EmulateViewport(1280, 900))

	// The keyboard alone: filter by prefix, open a key, see its waiters
	// and its events.
	b.do(chromedp.Focus(chromedp.ID("prefix")), chromedp.KeyEvent("db:\r"))
	b.waitFor("only db: keys", `location.hash === '#/locks?prefix=db%3A' && document.querySelectorAll('#locks tbody tr').length === 1 && `+row("db:migrate"), liveBound)
	b.do(chromedp.Focus(chromedp.CSS(`#locks a[href="#/key/db%3Amigrate"]`)), chromedp.KeyEvent("\r"))
	b.waitFor("db:migrate's detail", visible("view-key")+` && document.getElementById('key-owner').textContent === 'migrator-2' && document.getElementById('key-waiters').textContent === '1'`, liveBound)
	release(t, srv.URL, "", "db:migrate", held["db:migrate"])
	took = b.waitFor("the release and the next grant in the key's events", `document.getElementById('key-owner').textContent === 'migrator-3' && document.querySelector('#key-events .ev-released') && document.querySelector('#key-events .ev-acquired')`, liveBound)
	t.Logf("detail view: release → shown: %v", took)
	if got := eval[string](b, `document.querySelector('#key-expires time').title`); !strings.HasSuffix(got, " UTC (server: "+eval[string](b, `document.querySelector('#key-expires time').dateTime`)+")") {
		t.Errorf("hover text of a time = %q, want the server's UTC time", got)
	}

	// Leaders: lockd has no list of elections, so the view follows a name
	// typed in; it shows the leader's owner, term and value, not its lease.
	code, body := call(t, srv.URL, "", "/v1/elections/console-e/campaign", map[string]any{"ttl_ms": 60000, "owner": "leader-1", "value": "10.0.0.7:8080"})
	var lead struct {
		LeaseID string `json:"lease_id"`
		Term    uint64 `json:"term"`
	}
	if code != http.StatusOK || json.Unmarshal(body, &lead) != nil {
		t.Fatalf("campaign: %d %s", code, body)
	}
	b.do(chromedp.Navigate(srv.URL+"/ui/#/leaders"), chromedp.Focus(chromedp.ID("election")), chromedp.KeyEvent("console-e\r"))
	b.waitFor("the leader", visible("leader-detail")+fmt.Sprintf(` && document.getElementById('leader-owner').textContent === 'leader-1' && document.getElementById('leader-term').textContent === '%d' && document.getElementById('leader-value').textContent === '10.0.0.7:8080'`, lead.Term), 30*time.Second)
	if strings.Contains(b.html(), lead.LeaseID) {
		t.Errorf("the leaders view shows the leader's lease id")
	}
}

// With a tokens file the page asks for a token, keeps it for the tab, and
// shows only what that token may read: a token for "a:" never sees b:x.
func TestConsoleAuthInBrowser(t *testing.T) {
	tokens := filepath.Join(t.TempDir(), "tokens.json")
	if err := os.WriteFile(tokens, []byte(`{"tokens": [
		{"name": "ops", "token": "ops-secret-0123456789", "prefixes": [""], "rights": ["admin"]},
		{"name": "team-a", "token": "a-secret-0123456789", "prefixes": ["a:"], "rights": ["read"]}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := lockdtest.Start(t, &lockdtest.Options{Args: []string{"--auth-file", tokens}})
	ay := acquire(t, srv.URL, "ops-secret-0123456789", "a:y", "owner-of-a", 90*time.Second, 0)
	bx := acquire(t, srv.URL, "ops-secret-0123456789", "b:x", "owner-of-b", 90*time.Second, 0)

	b := newBrowser(t)
	b.do(chromedp.Navigate(srv.URL + "/ui/"))
	b.waitFor("the token form", visible("token-form")+` && document.activeElement === document.getElementById('token')`, 30*time.Second)
	if eval[bool](b, `document.getElementById('banner').textContent.includes('No authentication')`) {
		t.Errorf("the no-auth banner shows on a lockd with --auth-file")
	}
	b.do(chromedp.KeyEvent("wrong\r"))
	b.waitFor("the refusal", `document.getElementById('banner').textContent.includes('refused') && `+visible("token-form"), liveBound)
	b.do(chromedp.Focus(chromedp.ID("token")), chromedp.KeyEvent("a-secret-0123456789\r"))
	b.waitFor("the refusal to list every key", `document.getElementById('locks-status').textContent.includes('may not list every key')`, liveBound)
	if got := eval[string](b, `sessionStorage.getItem('lockd.token')`); got != "a-secret-0123456789" {
		t.Errorf("sessionStorage lockd.token = %q, want the token given", got)
	}
	b.do(chromedp.Focus(chromedp.ID("prefix")), chromedp.KeyEvent("a:\r"))
	b.waitFor("a:y", rowShows("a:y", "owner-of-a", ay.Token, "0"), liveBound)
	b.do(chromedp.SetValue(chromedp.ID("prefix"), "b:"), chromedp.Focus(chromedp.ID("prefix")), chromedp.KeyEvent("\r"))
	b.waitFor("the refusal to read b:", `location.hash === '#/locks?prefix=b%3A' && document.getElementById('locks-status').textContent.includes('may not read keys under') && document.querySelectorAll('#locks tbody tr').length === 0`, liveBound)
	b.do(chromedp.Navigate(srv.URL + "/ui/#/key/b%3Ax"))
	b.waitFor("the refusal to read b:x", `document.getElementById('key-status').textContent.includes('may not read this key')`, 30*time.Second)
	page := b.html()
	for _, secret := range []string{"owner-of-b", fmt.Sprintf(">%d<", bx.Token), bx.LeaseID, ay.LeaseID} {
		if strings.Contains(page, secret) {
			t.Errorf("a token for a: sees %q of b:x", secret)
		}
	}
	// Forgetting the token asks again.
	b.do(chromedp.Click(chromedp.ID("signout")))
	b.waitFor("the token form again", visible("token-form")+` && sessionStorage.getItem('lockd.token') === null`, liveBound)
}

// When the server streams key events (issue 13), the key view follows
// GET /v1/locks/{key}/events: acquired, released and an untouched expiry
// show as events, from the stream rather than from comparing answers.
func TestConsoleFollowsKeyEvents(t *testing.T) {
	srv := lockdtest.Start(t, nil)
	res, err := http.Get(srv.URL + "/v1/capabilities")
	if err != nil {
		t.Fatal(err)
	}
	var caps struct {
		Features map[string]json.RawMessage `json:"features"`
	}
	err = json.NewDecoder(res.Body).Decode(&caps)
	res.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if ev := string(caps.Features["events"]); ev == "" || ev == "null" {
		t.Skip("this lockd's capabilities list no key events yet (issue 13): the key view refreshes instead, as TestConsoleInBrowser checks")
	}
	b := newBrowser(t)
	b.do(chromedp.Navigate(srv.URL + "/ui/#/key/console%3Aev"))
	b.waitFor("the stream's snapshot", `document.getElementById('key-source').textContent.includes('event stream') && document.querySelector('#key-events .ev-snapshot') && document.getElementById('key-state').textContent === 'free'`, 30*time.Second)
	g := acquire(t, srv.URL, "", "console:ev", "streamer", 2*time.Second, 0)
	took := b.waitFor("the acquired event", fmt.Sprintf(`document.querySelector('#key-events .ev-acquired') && document.getElementById('key-owner').textContent === 'streamer' && document.getElementById('key-token').textContent === '%d'`, g.Token), liveBound)
	t.Logf("acquire → acquired event shown: %v", took)
	expires, err := time.Parse(time.RFC3339Nano, g.ExpiresAt)
	if err != nil {
		t.Fatal(err)
	}
	b.waitFor("the expired event with nobody touching the key", `document.querySelector('#key-events .ev-expired') && document.getElementById('key-state').textContent === 'free'`, time.Until(expires)+time.Second+liveBound)
	t.Logf("expiry → expired event shown %v after expires_at", time.Since(expires).Round(time.Millisecond))
	g = acquire(t, srv.URL, "", "console:ev", "streamer-2", time.Minute, 0)
	b.waitFor("the second holder", `document.getElementById('key-owner').textContent === 'streamer-2'`, liveBound)
	release(t, srv.URL, "", "console:ev", g)
	took = b.waitFor("the released event", `document.querySelector('#key-events .ev-released') && document.getElementById('key-state').textContent === 'free'`, liveBound)
	t.Logf("release → released event shown: %v", took)
}

// A browser whose clock is ten minutes behind still counts a lease down on
// the server's time (from the Date header), which is what decides expiry.
func TestConsoleCountdownOnServerTime(t *testing.T) {
	srv := lockdtest.Start(t, nil)
	b := newBrowser(t)
	const behind = `(() => { const real = Date.now; Date.now = () => real() - 600000; })();`
	b.do(chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: behind})
		return err
	}), chromedp.Navigate(srv.URL+"/ui/"))
	g := acquire(t, srv.URL, "", "console:clock", "slow-clock", time.Minute, 0)
	b.waitFor("the row", rowShows("console:clock", "slow-clock", g.Token, "0"), 30*time.Second)
	b.waitFor("a countdown under a minute", row("console:clock")+`.querySelector('.left').textContent.match(/^[1-6]?[0-9]\.[0-9] s$/)`, liveBound)
}
