package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The timeouts against slow clients never cut a long poll: a waiter is
// granted after longer than every read timeout, while a client that sends
// its body too slowly is answered and cut off.
func TestTimeoutsSpareLongPolls(t *testing.T) {
	env := map[string]string{
		"LOCKD_LISTEN": "127.0.0.1:0", "LOCKD_DATA_DIR": filepath.Join(t.TempDir(), "data"),
		"LOCKD_EMBED_ETCD_CLIENT_URL": freeURL(t), "LOCKD_EMBED_ETCD_PEER_URL": freeURL(t),
		"LOCKD_READ_HEADER_TIMEOUT": "1s", "LOCKD_READ_BODY_TIMEOUT": "1s", "LOCKD_IDLE_TIMEOUT": "1s",
	}
	base, _, _ := startInProcess(t, env)
	if code, _ := post(t, base+"/v1/locks/slow/acquire", `{"ttl_ms": 3000}`); code != 200 {
		t.Fatalf("first acquire: %d", code)
	}
	start := time.Now()
	code, body := post(t, base+"/v1/locks/slow/acquire", `{"wait_ms": 20000}`)
	if code != 200 {
		t.Fatalf("a long poll with 1s read timeouts: %d %v after %v, want granted when the first lease ends (3s)", code, body, time.Since(start))
	}

	// A body promised and not sent.
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /v1/locks/slow2/acquire HTTP/1.1\r\nHost: lockd\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{")
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("a client that stops sending its body got no answer: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout || !resp.Close {
		t.Errorf("a body not sent in time: %d (close %v), want 408 and the connection closed", resp.StatusCode, resp.Close)
	}
	if code, st := get(t, base+"/v1/locks/slow2"); code != 200 || st["held"] != false {
		t.Errorf("slow2 after the cut-off request: %d %v, want not held", code, st)
	}
}
