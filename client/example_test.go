package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/lockd/lockd/client"
)

// Hold a lock while doing work, stop as soon as it is lost, and pass the
// fencing token to the resource the lock protects.
func ExampleClient_Acquire() {
	c, err := client.New("127.0.0.1:7070", nil)
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	l, err := c.Acquire(ctx, "reports:nightly", client.AcquireOptions{
		TTL:   15 * time.Second, // renewed in the background every 5 s
		Wait:  time.Minute,      // queue for up to a minute
		Owner: "report-job",
	})
	if errors.Is(err, client.ErrHeld) {
		fmt.Println("someone else is running the report")
		return
	}
	if err != nil {
		log.Fatal(err)
	}
	defer l.Release(context.Background())

	// Bind the work to the lease: it is cancelled when the lock is lost.
	work, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-l.Lost():
			cancel()
		case <-work.Done():
		}
	}()

	req, _ := http.NewRequestWithContext(work, http.MethodPut, "http://127.0.0.1:7071/kv/report", strings.NewReader("done"))
	req.Header.Set("Lock-Key", l.Key())
	req.Header.Set("Lock-Token", strconv.FormatUint(l.Token(), 10))
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
	}
}

// Tell "someone else has it" apart from an error, and show who.
func ExampleError() {
	c, _ := client.New("http://127.0.0.1:7070", nil)
	_, err := c.Acquire(context.Background(), "deploy", client.AcquireOptions{TTL: time.Minute})
	var e *client.Error
	switch {
	case errors.Is(err, client.ErrHeld) && errors.As(err, &e) && e.Holder != nil:
		fmt.Printf("held by %s until %s\n", e.Holder.Owner, e.Holder.ExpiresAt)
	case errors.Is(err, client.ErrOutcomeUnknown):
		fmt.Println("the reply was lost; the lock may be held by an unknown lease until its TTL ends")
	case err != nil:
		fmt.Println("error:", err)
	}
}

// Raw leases, for callers that renew on their own schedule.
func ExampleClient_AcquireLease() {
	c, _ := client.New("127.0.0.1:7070", nil)
	ctx := context.Background()
	g, err := c.AcquireLease(ctx, "batch", client.AcquireOptions{TTL: 30 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	// ... work, and before g.Deadline:
	if g, err = c.RenewLease(ctx, "batch", g.LeaseID, 30*time.Second); err != nil {
		log.Fatal(err) // ErrLeaseExpired: stop working, the lock is gone
	}
	_ = c.ReleaseLease(ctx, "batch", g.LeaseID)
}
