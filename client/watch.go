package client

// Watching a lock key: GET /v1/locks/{key}/events, read as server-sent
// events, followed again with Last-Event-ID whenever the connection drops or
// the server stops, so a caller sees one stream per Watch.

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

// Kinds of WatchEvent.
const (
	// WatchSnapshot is the key's state: the first event, and the one after
	// every WatchResync.
	WatchSnapshot = "snapshot"
	// WatchAcquired is a grant: Token, Owner, ExpiresAt.
	WatchAcquired = "acquired"
	// WatchReleased and WatchExpired end the grant named by Token.
	WatchReleased = "released"
	WatchExpired  = "expired"
	// WatchResync says events may have been missed (Reason says why); a
	// WatchSnapshot of the state now follows.
	WatchResync = "resync"
)

// WatchEvent is one event of a key's stream. Kind is set, or Err on the
// stream's last event.
type WatchEvent struct {
	Kind string
	// Held: in a snapshot, whether an unexpired grant holds the key.
	Held bool
	// Token names the grant (the holder's, in a held snapshot).
	Token uint64
	// Owner and ExpiresAt: the holder's, in acquired and a held snapshot.
	Owner     string
	ExpiresAt time.Time
	// Reason: in a resync, why (cursor_unknown, history_lost,
	// backend_unavailable).
	Reason string
	// ID is the server's id of the event (empty for resync): events may
	// repeat across a reconnect, dedupe by it.
	ID  string
	Err error
}

// Watch streams key's events: a snapshot first, then every grant and its
// end (released or expired) in token order. When the connection drops or the
// server stops (event: shutdown), Watch connects again, with Last-Event-ID,
// after a back-off: the server resumes without a gap or sends a resync and a
// fresh snapshot. The channel's last event carries Err — ctx's error, or the
// server's refusal (an *Error: 403, 501 not_supported, ...) — then it closes.
//
// Errors from Watch itself are those of the first connection (an *Error, or
// ErrUnavailable when lockd could not be reached), after which nothing was
// started.
func (c *Client) Watch(ctx context.Context, key string) (<-chan WatchEvent, error) {
	w := &watcher{c: c, path: lockPath(key, "events"), out: make(chan WatchEvent, 16)}
	body, err := w.connect(ctx)
	if err != nil {
		return nil, err
	}
	go w.run(ctx, body)
	return w.out, nil
}

type watcher struct {
	c    *Client
	path string
	out  chan WatchEvent
	last string // the id of the last event delivered
}

// connect opens the stream from w.last.
func (w *watcher) connect(ctx context.Context) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, w.c.base.String()+w.path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream, application/problem+json")
	req.Header.Set("User-Agent", w.c.ua)
	if w.c.token != "" {
		req.Header.Set("Authorization", "Bearer "+w.c.token)
	}
	if w.last != "" {
		req.Header.Set("Last-Event-ID", w.last)
	}
	resp, err := w.c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, errors.Join(&transportError{err}, ctx.Err())
		}
		return nil, errors.Join(ErrUnavailable, &transportError{err})
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return nil, decodeProblem(resp, data)
	}
	return resp.Body, nil
}

func (w *watcher) run(ctx context.Context, body io.ReadCloser) {
	var err error
	for attempt := 0; ; {
		if body != nil {
			if w.read(ctx, body) {
				attempt = 0 // the stream worked: back off afresh
			}
			body.Close()
		}
		if ctx.Err() != nil {
			err = ctx.Err()
			break
		}
		if perr := w.c.pause(ctx, attempt, errors.New("lockd: event stream ended")); perr != nil {
			err = ctx.Err()
			break
		}
		attempt++
		body, err = w.connect(ctx)
		if refused(err) {
			break // no right, no such feature: trying again changes nothing
		}
	}
	select {
	case w.out <- WatchEvent{Err: err}:
	case <-time.After(time.Second): // nobody reads any more
	}
	close(w.out)
}

// refused reports whether err is the server's answer that no retry will
// change: a 4xx other than 408 and 429, or 501.
func refused(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	return e.Status == http.StatusNotImplemented ||
		e.Status >= 400 && e.Status < 500 && e.Status != http.StatusRequestTimeout && e.Status != http.StatusTooManyRequests
}

type watchData struct {
	Held      bool    `json:"held"`
	Token     uint64  `json:"token"`
	Owner     string  `json:"owner"`
	ExpiresAt *string `json:"expires_at"`
	Reason    string  `json:"reason"`
}

// read delivers body's events until it ends (a drop, or the server's
// shutdown) or ctx ends; it reports whether any event came.
func (w *watcher) read(ctx context.Context, body io.Reader) bool {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var id, event, data string
	got := false
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "id:"):
			id = strings.TrimPrefix(strings.TrimPrefix(line, "id:"), " ")
		case strings.HasPrefix(line, "event:"):
			event = strings.TrimPrefix(strings.TrimPrefix(line, "event:"), " ")
		case strings.HasPrefix(line, "data:"):
			data = strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " ")
		case line == "":
			ev, ok := w.event(id, event, data)
			id, event, data = "", "", ""
			if ev.Kind == "shutdown" {
				return got // this lockd stops: another may serve
			}
			if !ok {
				continue
			}
			select {
			case w.out <- ev:
			case <-ctx.Done():
				return got
			}
			got = true
			if ev.ID != "" {
				w.last = ev.ID
			}
		}
	}
	return got
}

// event decodes one frame; ok is false for frames that are not delivered
// (shutdown, comments, kinds this client does not know).
func (w *watcher) event(id, event, data string) (WatchEvent, bool) {
	switch event {
	case WatchSnapshot, WatchAcquired, WatchReleased, WatchExpired, WatchResync:
	case "shutdown":
		return WatchEvent{Kind: "shutdown"}, false
	default:
		return WatchEvent{}, false
	}
	var d watchData
	if err := json.Unmarshal([]byte(data), &d); err != nil {
		return WatchEvent{}, false
	}
	ev := WatchEvent{Kind: event, Held: d.Held, Token: d.Token, Owner: d.Owner, Reason: d.Reason, ID: id}
	if d.ExpiresAt != nil {
		t, err := time.Parse(time.RFC3339Nano, *d.ExpiresAt)
		if err != nil {
			return WatchEvent{}, false
		}
		ev.ExpiresAt = t
	}
	return ev, true
}

func (e WatchEvent) String() string {
	if e.Err != nil {
		return "error: " + e.Err.Error()
	}
	return fmt.Sprintf("%s token %d", e.Kind, e.Token)
}
