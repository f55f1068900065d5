package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"

	"github.com/lockd/lockd/client"
	"github.com/lockd/lockd/internal/lease"
)

// keyEventLine is a key event as a JSON line.
type keyEventLine struct {
	Event     string `json:"event"`
	ID        string `json:"id,omitempty"`
	Key       string `json:"key,omitempty"`
	Held      *bool  `json:"held,omitempty"`
	Token     uint64 `json:"token,omitempty"`
	Owner     string `json:"owner,omitempty"`
	ExpiresAt string `json:"expires_at,omitempty"`
	Reason    string `json:"reason,omitempty"`
}

// cmdWatch prints one line per event of a lock key, as observe does for an
// election.
func cmdWatch(ctx context.Context, g *global, args []string) int {
	var count int
	fs := flag.NewFlagSet("watch", flag.ContinueOnError)
	fs.IntVar(&count, "count", 0, "exit after this many events (0: until interrupted)")
	pos, tail, err := parse(g, fs, args, 1)
	if err != nil {
		return flagErr(g, "watch", err)
	}
	if len(pos) != 1 || len(tail) != 0 || count < 0 {
		return usageErr(g, "watch: want exactly one KEY (and --count ≥ 0)")
	}
	c, err := g.client()
	if err != nil {
		return usageErr(g, "%v", err)
	}
	key := pos[0]
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := c.Watch(wctx, key)
	if err != nil {
		return fail(g, "watch "+key, err)
	}
	n := 0
	for ev := range events {
		if ev.Err != nil {
			if errors.Is(ev.Err, context.Canceled) && ctx.Err() != nil {
				return exitOK // interrupted: the way to end a watch
			}
			return fail(g, "watch "+key, ev.Err)
		}
		printKeyEvent(g, key, ev)
		if n++; count > 0 && n >= count {
			return exitOK
		}
	}
	return exitOK
}

func printKeyEvent(g *global, key string, ev client.WatchEvent) {
	o := keyEventLine{Event: ev.Kind, ID: ev.ID, Token: ev.Token, Owner: ev.Owner, Reason: ev.Reason}
	if !ev.ExpiresAt.IsZero() {
		o.ExpiresAt = lease.Format(ev.ExpiresAt)
	}
	if ev.Kind == client.WatchSnapshot {
		o.Key, o.Held = key, &ev.Held
	}
	if g.json {
		b, _ := json.Marshal(o)
		fmt.Fprintf(g.stdout, "%s\n", b)
		return
	}
	switch ev.Kind {
	case "snapshot":
		if ev.Held {
			fmt.Fprintf(g.stdout, "snapshot %s held token=%d owner=%q expires=%s\n", o.Key, o.Token, o.Owner, o.ExpiresAt)
		} else {
			fmt.Fprintf(g.stdout, "snapshot %s free\n", o.Key)
		}
	case "acquired":
		fmt.Fprintf(g.stdout, "acquired token=%d owner=%q expires=%s\n", o.Token, o.Owner, o.ExpiresAt)
	case "released", "expired":
		fmt.Fprintf(g.stdout, "%s token=%d\n", o.Event, o.Token)
	default:
		fmt.Fprintf(g.stdout, "%s reason=%s\n", o.Event, o.Reason)
	}
}
