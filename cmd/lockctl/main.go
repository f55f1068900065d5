// Command lockctl uses lockd from shell scripts and cron jobs: it runs a
// command while holding a lock (renewing it, and stopping the command before
// the lease could run out), runs a command while leader of an election
// (elect), follows an election (observe) or a key (watch), and exposes acquire, renew,
// release, status and list for scripts.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// SIGINT/SIGTERM are handled by each command (run forwards them to its
	// child); this context only ends the plain request commands.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
