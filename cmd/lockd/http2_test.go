package main

import (
	"crypto/tls"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lockd/lockd/internal/testserver"
)

// h2Client speaks HTTP/2 only: h2c with prior knowledge for http://, h2 by
// ALPN for https://.
func h2Client(tlsConf *tls.Config) *http.Client {
	var p http.Protocols
	p.SetHTTP2(true)
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Timeout: time.Minute, Transport: &http.Transport{Protocols: &p, TLSClientConfig: tlsConf}}
}

type answer struct {
	status int
	proto  string
	json   map[string]any
	err    error
}

func send(c *http.Client, method, url, body string) answer {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return answer{err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return answer{err: err}
	}
	defer resp.Body.Close()
	a := answer{status: resp.StatusCode, proto: resp.Proto}
	data, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(data, &a.json)
	return a
}

// The plain listener speaks HTTP/1.1 and h2c (prior knowledge). Over h2c a
// long poll outlasts every connection timeout, and the waiter limits still
// answer 429 with a problem on the same connection.
func TestHTTP2Cleartext(t *testing.T) {
	env := map[string]string{
		"LOCKD_LISTEN": "127.0.0.1:0", "LOCKD_DATA_DIR": filepath.Join(t.TempDir(), "data"),
		"LOCKD_EMBED_ETCD_CLIENT_URL": freeURL(t), "LOCKD_EMBED_ETCD_PEER_URL": freeURL(t),
		"LOCKD_READ_HEADER_TIMEOUT": "1s", "LOCKD_READ_BODY_TIMEOUT": "1s", "LOCKD_IDLE_TIMEOUT": "1s",
		"LOCKD_MAX_WAITERS_PER_KEY": "1",
	}
	base, _, _ := startInProcess(t, env)
	h1 := &http.Client{Timeout: time.Minute}
	h2 := h2Client(nil)

	if a := send(h1, "GET", base+"/v1/locks/h2:a", ""); a.err != nil || a.status != 200 || a.proto != "HTTP/1.1" {
		t.Fatalf("HTTP/1.1 inspect: %d %s %v, want 200 over HTTP/1.1", a.status, a.proto, a.err)
	}
	if a := send(h2, "POST", base+"/v1/locks/h2:a/acquire", `{"ttl_ms": 3000}`); a.err != nil || a.status != 200 || a.proto != "HTTP/2.0" {
		t.Fatalf("h2c acquire: %d %s %v, want 200 over HTTP/2.0", a.status, a.proto, a.err)
	}
	waited := make(chan answer, 1)
	go func() { waited <- send(h2, "POST", base+"/v1/locks/h2:a/acquire", `{"wait_ms": 30000}`) }()
	eventually(t, 20*time.Second, "the h2c long poll queued", func() (bool, string) {
		a := send(h2, "GET", base+"/v1/locks/h2:a", "")
		return a.json["waiters"] == float64(1), a.proto
	})
	if a := send(h2, "POST", base+"/v1/locks/h2:a/acquire", `{"wait_ms": 30000}`); a.status != 429 || a.json["code"] != "too_many_waiters" || a.proto != "HTTP/2.0" {
		t.Errorf("a second waiter over h2c with --max-waiters-per-key 1: %d %v %s (%v), want 429 too_many_waiters over HTTP/2.0", a.status, a.json, a.proto, a.err)
	}
	if a := <-waited; a.err != nil || a.status != 200 || a.proto != "HTTP/2.0" {
		t.Errorf("an h2c long poll with 1s connection timeouts: %d %v %s (%v), want granted when the first lease ends (3s)", a.status, a.json, a.proto, a.err)
	}
}

// Over TLS lockd offers h2 and http/1.1 by ALPN.
func TestHTTP2OverTLS(t *testing.T) {
	ca := testserver.TestCA(t)
	srv := ca.MustIssue(t, "server", "lockd", testserver.Loopback)
	env := map[string]string{
		"LOCKD_LISTEN": "127.0.0.1:0", "LOCKD_DATA_DIR": filepath.Join(t.TempDir(), "data"),
		"LOCKD_EMBED_ETCD_CLIENT_URL": freeURL(t), "LOCKD_EMBED_ETCD_PEER_URL": freeURL(t),
		"LOCKD_TLS_CERT": srv.CertFile, "LOCKD_TLS_KEY": srv.KeyFile,
	}
	base, _, _ := startInProcess(t, env)
	tlsConf := &tls.Config{RootCAs: ca.Pool()}
	h1 := &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: tlsConf.Clone()}}
	for _, tc := range []struct {
		c          *http.Client
		key, proto string
	}{{h2Client(tlsConf.Clone()), "tls:h2", "HTTP/2.0"}, {h1, "tls:h1", "HTTP/1.1"}} {
		a := send(tc.c, "POST", base+"/v1/locks/"+tc.key+"/acquire", `{"ttl_ms": 5000}`)
		if a.err != nil || a.status != 200 || a.proto != tc.proto {
			t.Errorf("acquire over https asking for %s: %d %s %v, want 200 over %s", tc.proto, a.status, a.proto, a.err, tc.proto)
		}
	}
}

func TestHTTP2MaxStreamsFlag(t *testing.T) {
	none := func(string) string { return "" }
	if c, err := parseFlags(nil, none, io.Discard); err != nil || c.http2Streams != 10000 {
		t.Errorf("default --http2-max-streams: %d (%v), want 10000", c.http2Streams, err)
	}
	if _, err := parseFlags([]string{"--http2-max-streams", "0"}, none, io.Discard); err == nil {
		t.Error("--http2-max-streams 0 accepted, want an error (0 would mean Go's default of 250)")
	}
}
