package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strconv"

	"github.com/lockd/lockd/client"
	"github.com/lockd/lockd/internal/lease"
)

// cmdElect runs a command while leader of an election, with run's rules:
// the leadership renews itself, the command is stopped before it can lapse,
// and lockctl resigns when the command exits.
func cmdElect(ctx context.Context, g *global, args []string, getenv env) int {
	var value string
	fs := flag.NewFlagSet("elect", flag.ContinueOnError)
	fs.StringVar(&value, "value", "", "what the leader tells observers (at most 4 KiB), e.g. its address")
	return supervise(ctx, g, fs, args, getenv, superviseSpec{
		what: "leadership of", usage: "elect: want NAME [flags] -- CMD [ARGS...]",
		take: func(ctx context.Context, c *client.Client, name string, o takeOpts) (*client.Lock, []string, error) {
			l, err := c.Campaign(ctx, name, client.CampaignOptions{
				TTL: o.ttl, Wait: o.wait, Owner: o.owner, Value: value, Margin: o.margin, RenewEvery: o.renewEvery, LockDelay: o.lockDelay,
			})
			if err != nil {
				return nil, nil, fmt.Errorf("campaign %s: %w", name, err)
			}
			return l.Lock, []string{
				"LOCKD_ELECTION=" + l.Name(),
				"LOCKD_TERM=" + strconv.FormatUint(l.Term(), 10),
				"LOCKD_LEASE_ID=" + l.LeaseID(),
				"LOCKD_DEADLINE=" + lease.Format(l.Deadline()),
			}, nil
		},
	})
}

// observeLine is an observe event as a JSON line.
type observeLine struct {
	Event     string `json:"event"`
	ID        string `json:"id,omitempty"`
	Term      uint64 `json:"term,omitempty"`
	Owner     string `json:"owner,omitempty"`
	Value     string `json:"value,omitempty"`
	ExpiresAt string `json:"expires_at,omitempty"`
	LastTerm  uint64 `json:"last_term,omitempty"`
	Reason    string `json:"reason,omitempty"`
}

// cmdObserve prints one line per event of an election until interrupted
// (exit 0), after --count events, or until the server refuses the stream.
func cmdObserve(ctx context.Context, g *global, args []string) int {
	var count int
	fs := flag.NewFlagSet("observe", flag.ContinueOnError)
	fs.IntVar(&count, "count", 0, "exit after this many events (0: until interrupted)")
	pos, tail, err := parse(g, fs, args, 1)
	if err != nil {
		return flagErr(g, "observe", err)
	}
	if len(pos) != 1 || len(tail) != 0 || count < 0 {
		return usageErr(g, "observe: want exactly one NAME (and --count ≥ 0)")
	}
	c, err := g.client()
	if err != nil {
		return usageErr(g, "%v", err)
	}
	name := pos[0]
	octx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := c.Observe(octx, name)
	if err != nil {
		return fail(g, "observe "+name, err)
	}
	n := 0
	for ev := range events {
		if ev.Err != nil {
			if errors.Is(ev.Err, context.Canceled) && ctx.Err() != nil {
				return exitOK // interrupted: the way to end an observe
			}
			return fail(g, "observe "+name, ev.Err)
		}
		printObserve(g, ev)
		if n++; count > 0 && n >= count {
			return exitOK
		}
	}
	return exitOK
}

func printObserve(g *global, ev client.ObserveEvent) {
	o := observeLine{Event: ev.Type, ID: ev.ID, LastTerm: ev.LastTerm, Reason: ev.Reason}
	if ev.Leader != nil {
		o.Term, o.Owner, o.Value, o.ExpiresAt = ev.Leader.Term, ev.Leader.Owner, ev.Leader.Value, lease.Format(ev.Leader.ExpiresAt)
	}
	if g.json {
		b, _ := json.Marshal(o)
		fmt.Fprintf(g.stdout, "%s\n", b)
		return
	}
	switch ev.Type {
	case "leader":
		fmt.Fprintf(g.stdout, "leader term=%d owner=%q value=%q expires=%s\n", o.Term, o.Owner, o.Value, o.ExpiresAt)
	case "no_leader":
		// The first event of a stream may not know the last term.
		line := "no_leader"
		if o.LastTerm > 0 {
			line += " last_term=" + strconv.FormatUint(o.LastTerm, 10)
		}
		if o.Reason != "" {
			line += " reason=" + o.Reason
		}
		fmt.Fprintln(g.stdout, line)
	default:
		fmt.Fprintf(g.stdout, "%s reason=%s\n", o.Event, o.Reason)
	}
}
