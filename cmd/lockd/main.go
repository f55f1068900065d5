// Command lockd serves the lockd HTTP lock API over a backend store: an
// embedded etcd by default, or etcd, ZooKeeper, Redis or Redlock servers.
// Run `lockd --help` for the flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "lockd:", err)
		os.Exit(1)
	}
}
