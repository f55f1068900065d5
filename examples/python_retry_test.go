package examples_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/lockd/lockd/client"
	"github.com/lockd/lockd/internal/lockdtest"
)

// The Python example's acquire survives a lost reply: a real TCP proxy
// drops the first reply (and closes the connection), the example retries
// with the same Idempotency-Key and gets the grant the first attempt made,
// not a 409 against it.
func TestPythonRetriesLostReply(t *testing.T) {
	need(t, "python3")
	srv := lockdtest.Start(t, nil)
	proxy := toxiproxy.NewProxy(toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop()), "lockd", "127.0.0.1:0", srv.Addr)
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(proxy.Stop)
	if _, err := proxy.Toxics.AddToxicJson(strings.NewReader(`{"name":"drop","type":"timeout","stream":"downstream","attributes":{"timeout":300}}`)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	const key = "python-lost-reply"
	script := `import sys; sys.path.insert(0, "python"); import lockd_example as m
l = m.Client(sys.argv[1]).acquire(sys.argv[2], ttl_ms=60000, backoff=1.5)
print("granted", l.lease_id, l.token)`
	cmd := exec.CommandContext(ctx, "python3", "-c", script, proxy.Listen, key)
	cmd.Env = os.Environ()
	done := make(chan struct{})
	var out []byte
	var runErr error
	go func() {
		defer close(done)
		out, runErr = cmd.CombinedOutput()
	}()
	c, err := client.New(srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Once the first attempt's grant is in the store, let later
	// connections through: its reply is already dropped, and the proxy
	// closes that connection; the retry comes after 1.5 s.
	for {
		st, err := c.Inspect(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if st.Held {
			break
		}
		select {
		case <-done:
			t.Fatalf("python ended before its grant: %v\n%s", runErr, out)
		case <-time.After(10 * time.Millisecond):
		}
	}
	time.Sleep(600 * time.Millisecond)
	if err := proxy.Toxics.RemoveToxic(ctx, "drop"); err != nil {
		t.Fatal(err)
	}
	<-done
	t.Logf("python:\n%s", out)
	if runErr != nil {
		t.Fatalf("python acquire with its first reply lost: %v", runErr)
	}
	st, err := c.Inspect(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Held || !strings.Contains(string(out), " "+itoa(st.Holder.Token)+"\n") {
		t.Fatalf("the key is %+v; want it held by the grant python printed (one grant, no orphan)", st)
	}
}

func itoa(n uint64) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}
