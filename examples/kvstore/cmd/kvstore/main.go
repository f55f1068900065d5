// Command kvstore is a tiny key-value store that refuses stale lock holders:
// the resource side of fencing with lockd. A writer takes a lockd lock and
// sends its fencing token with every write:
//
//	curl -X PUT -H "Lock-Key: $LOCKD_KEY" -H "Lock-Token: $LOCKD_TOKEN" \
//	     --data 'hello' http://127.0.0.1:7071/kv/greeting
//
// A writer whose lease ran out while it was paused still holds its old
// token; once a newer holder has written, the old token is refused (409
// stale_lock_token), so the late write cannot clobber the newer one.
//
// A semaphore's permit holder adds its slot, and is fenced per (key, slot):
//
//	curl -X PUT -H "Lock-Key: $LOCKD_KEY" -H "Lock-Slot: $LOCKD_SLOT" \
//	     -H "Lock-Token: $LOCKD_TOKEN" --data 'part' http://127.0.0.1:7071/kv/part-$LOCKD_SLOT
package main

import (
	"context"
	"errors"
	"flag"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/lockd/lockd/examples/kvstore"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:7071", "address to serve on")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	srv := &http.Server{Addr: *addr, Handler: kvstore.NewStore().Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	log.Printf("kvstore: serving on http://%s/kv/{name}", *addr)
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}
