package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// ObserveEvent is one event of an election's observe stream.
type ObserveEvent struct {
	// Type is "leader", "no_leader" or "resync"; empty on the final event,
	// whose Err is set.
	Type string
	// ID is the server's event id (what a reconnect sends as Last-Event-ID).
	ID string
	// Leader is set for "leader": a new term, or a proclaim in the same term.
	Leader *Leader
	// LastTerm and Reason ("resigned" or "expired") are set for "no_leader".
	LastTerm uint64
	Reason   string
	// Err is set on the last event only, after which the channel is
	// closed: ctx's error, or a refusal no reconnect can cure (bad name,
	// not authorized, not supported).
	Err error
}

// observeIdle is how long a stream may stay silent (the server pings every
// 15 s) before the client takes it for dead and reconnects.
const observeIdle = 50 * time.Second

// Observe follows the election name: the current state first, then every
// change. Across a dropped connection, a server restart or a lockd's
// shutdown it reconnects (with back-off) sending Last-Event-ID; lockd then
// says "resync" and sends the current state again, so a change during the
// gap shows as a resync followed by the new state, never as silence. The
// channel never closes without a last event whose Err says why: ctx ended,
// or the server refused the stream for good (4xx other than 429: a 429
// too_many_streams is retried after its Retry-After).
//
// The first connection is made before Observe returns: its failure (any
// error, as for Inspect) is Observe's error, and no channel is made. Read
// the channel promptly: the stream waits for the reader.
func (c *Client) Observe(ctx context.Context, name string) (<-chan ObserveEvent, error) {
	return follow(ctx, c, electionPath(name, "observe"), decodeObserve, func(err error) ObserveEvent { return ObserveEvent{Err: err} })
}

func decodeObserve(f sseFrame) (ObserveEvent, bool) {
	ev := ObserveEvent{Type: f.event, ID: f.id}
	switch f.event {
	case "leader":
		var l leaderJSON
		if json.Unmarshal([]byte(f.data), &l) != nil {
			return ev, false
		}
		ev.Leader = l.leader()
	case "no_leader":
		var nl struct {
			LastTerm uint64 `json:"last_term"`
			Reason   string `json:"reason"`
		}
		if json.Unmarshal([]byte(f.data), &nl) != nil {
			return ev, false
		}
		ev.LastTerm, ev.Reason = nl.LastTerm, nl.Reason
	case "resync":
		var r struct {
			Reason string `json:"reason"`
		}
		_ = json.Unmarshal([]byte(f.data), &r)
		ev.Reason = r.Reason
	default:
		return ev, false // shutdown (we reconnect) or an event this client does not know
	}
	return ev, true
}

// sseFrame is one server-sent event.
type sseFrame struct{ id, event, data string }

// follow follows an SSE route, reconnecting, and delivers the events decode
// keeps; last makes the final event from why the stream ended.
func follow[E any](ctx context.Context, c *Client, path string, decode func(sseFrame) (E, bool), last func(error) E) (<-chan E, error) {
	// The first connection is made here, so that a refusal is an error of
	// the call rather than a first event.
	resp, err := c.openStream(ctx, path, "")
	if err != nil {
		return nil, err
	}
	out := make(chan E)
	go func() {
		defer close(out)
		final := func(err error) {
			// A refusal waits for the reader as long as ctx lives; once
			// ctx has ended the reader may be gone too: wait a second.
			if ctx.Err() == nil {
				select {
				case out <- last(err):
					return
				case <-ctx.Done():
				}
			}
			select {
			case out <- last(err):
			case <-time.After(time.Second):
			}
		}
		lastID := ""
		attempt := 0
		var cause error // why the last reconnect failed
		for {
			if resp != nil {
				// Until the stream drops, goes silent, or ctx ends.
				if readStream(ctx, resp, decode, out, &lastID) {
					attempt = 0
				}
				cause = nil
				if ctx.Err() != nil {
					final(ctx.Err())
					return
				}
			}
			if err := c.pause(ctx, min(attempt, 5), cause); err != nil {
				final(ctx.Err())
				return
			}
			attempt++
			resp, err = c.openStream(ctx, path, lastID)
			if err != nil {
				if ctx.Err() != nil {
					final(ctx.Err())
					return
				}
				var e *Error
				if !retryable(err) && !(errors.As(err, &e) && e.Status == http.StatusTooManyRequests) {
					final(err)
					return
				}
				// A 429 (too_many_streams) passes with time: its
				// Retry-After sets the next pause.
				cause, resp = err, nil
			}
		}
	}()
	return out, nil
}

// openStream makes one stream request and checks its answer.
func (c *Client) openStream(ctx context.Context, path, lastID string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base.String()+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("User-Agent", c.ua)
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, errors.Join(&transportError{err}, ctx.Err())
		}
		return nil, &transportError{err}
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return nil, decodeProblem(resp, data)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		resp.Body.Close()
		return nil, fmt.Errorf("lockd: %s answered %q, not an event stream", path, ct)
	}
	return resp, nil
}

// readStream delivers resp's events until it ends, stays silent for
// observeIdle, or ctx ends. It reports whether any event came.
func readStream[E any](ctx context.Context, resp *http.Response, decode func(sseFrame) (E, bool), out chan<- E, lastID *string) bool {
	defer resp.Body.Close()
	// A silent stream is a dead one: closing the body ends the read.
	idle := time.AfterFunc(observeIdle, func() { resp.Body.Close() })
	defer idle.Stop()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	got := false
	var f sseFrame
	var data []string
	for sc.Scan() {
		idle.Reset(observeIdle)
		line := sc.Text()
		if line == "" {
			if f.event == "" && len(data) == 0 {
				continue // a comment's end, or a stray blank line
			}
			f.data = strings.Join(data, "\n")
			if f.event == "" {
				f.event = "message"
			}
			if f.id != "" {
				*lastID = f.id
			}
			if ev, ok := decode(f); ok {
				select {
				case out <- ev:
					got = true
				case <-ctx.Done():
					return got
				}
			}
			f, data = sseFrame{}, nil
			continue
		}
		if strings.HasPrefix(line, ":") {
			continue // ": ping" and other comments keep the stream alive only
		}
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch field {
		case "id":
			f.id = value
		case "event":
			f.event = value
		case "data":
			data = append(data, value)
		}
	}
	return got
}
