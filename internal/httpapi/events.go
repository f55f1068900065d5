package httpapi

// GET /v1/locks/{key}/events: the key's events as server-sent events. The
// id of each event is the backend's cursor, so a client's Last-Event-ID is
// handed back to the backend, which resumes without a gap or says resync.

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/auth"
	"github.com/lockd/lockd/internal/lease"
)

// Why a stream says resync.
const (
	resyncCursorUnknown = "cursor_unknown"      // a Last-Event-ID the backend cannot resume from
	resyncHistoryLost   = "history_lost"        // the store's history ran out under the stream
	resyncUnavailable   = "backend_unavailable" // the backend's stream ended; this is a new one
)

type snapshotJSON struct {
	Key       string  `json:"key"`
	Held      bool    `json:"held"`
	Owner     *string `json:"owner,omitempty"`
	Token     *uint64 `json:"token,omitempty"`
	ExpiresAt *string `json:"expires_at,omitempty"`
}

type acquiredJSON struct {
	Token     uint64 `json:"token"`
	Owner     string `json:"owner"`
	ExpiresAt string `json:"expires_at"`
}

type endedJSON struct {
	Token uint64 `json:"token"`
}

// maxCursor bounds a Last-Event-ID passed on to the backend: longer is
// nothing a backend made (backend.KeyEvent.Cursor).
const maxCursor = 128

func (s *Server) lockEvents(w http.ResponseWriter, r *http.Request) {
	key, err := keyParam(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if !s.allow(w, r, auth.RightRead, key) {
		return
	}
	wt, ok := s.b.(backend.Watcher)
	if !ok {
		s.fail(w, r, errNotSupported("key events"))
		return
	}
	leave, ok := s.enterStream(w, r, "lock", key)
	if !ok {
		return
	}
	defer leave()
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	after := r.Header.Get("Last-Event-ID")
	if len(after) > maxCursor {
		after = "-" // no backend's cursor: a resync
	}
	events, err := wt.Watch(ctx, key, after)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := startSSE(w)
	if out.comment("watching "+strconv.Quote(key)) != nil {
		return
	}
	ping := time.NewTicker(s.streamPing())
	defer ping.Stop()
	resync := resyncCursorUnknown // the reason a snapshot with Resync has
	last := after
	for {
		var err error
		select {
		case ev, open := <-events:
			if !open {
				ev.Err = errors.New("the backend closed its stream without saying why")
			}
			if ev.Err != nil {
				// The backend's stream ended: follow a new one from
				// the last event sent, which resumes or resyncs.
				if ctx.Err() != nil {
					return
				}
				s.log.Warn("key event stream lost", "key", key, "err", ev.Err)
				if events, ok = s.rewatch(ctx, wt, key, last, out, ping); !ok {
					return
				}
				resync = resyncUnavailable
				continue
			}
			err = s.sendKeyEvent(out, key, ev, resync)
			last, resync = ev.Cursor, resyncHistoryLost
		case <-ping.C:
			err = out.comment("ping")
		case <-s.stopping:
			_ = out.send("", "shutdown", struct{}{})
			return
		case <-ctx.Done():
			return
		}
		if err != nil {
			return // the client left
		}
	}
}

func (s *Server) sendKeyEvent(out *sse, key string, ev backend.KeyEvent, resync string) error {
	switch ev.Kind {
	case backend.KeySnapshot:
		if ev.Resync {
			if err := out.send("", "resync", resyncJSON{Reason: resync}); err != nil {
				return err
			}
		}
		snap := snapshotJSON{Key: key, Held: ev.Held}
		if ev.Held {
			exp := lease.Format(ev.ExpiresAt)
			snap.Owner, snap.Token, snap.ExpiresAt = &ev.Owner, &ev.Token, &exp
		}
		return out.send(ev.Cursor, "snapshot", snap)
	case backend.KeyAcquired:
		return out.send(ev.Cursor, "acquired", acquiredJSON{Token: ev.Token, Owner: ev.Owner, ExpiresAt: lease.Format(ev.ExpiresAt)})
	default: // released, expired
		return out.send(ev.Cursor, ev.Kind, endedJSON{Token: ev.Token})
	}
}

// rewatch opens wt's stream again from the cursor last sent, once a second,
// pinging meanwhile.
func (s *Server) rewatch(ctx context.Context, wt backend.Watcher, key, after string, out *sse, ping *time.Ticker) (<-chan backend.KeyEvent, bool) {
	retry := time.NewTicker(time.Second)
	defer retry.Stop()
	for {
		select {
		case <-retry.C:
			if events, err := wt.Watch(ctx, key, after); err == nil {
				return events, true
			}
		case <-ping.C:
			if out.comment("ping") != nil {
				return nil, false
			}
		case <-s.stopping:
			_ = out.send("", "shutdown", struct{}{})
			return nil, false
		case <-ctx.Done():
			return nil, false
		}
	}
}

// enterStream admits one more event stream (kind "lock" or "election") on
// name, or answers 429 too_many_streams. leave must be called once the
// stream ends.
func (s *Server) enterStream(w http.ResponseWriter, r *http.Request, kind, name string) (leave func(), ok bool) {
	left, limit, err := s.streams.enter(kind+"\x00"+name, s.opts.Limits)
	if err != nil {
		s.m.limited.WithLabelValues(limit).Inc()
		s.refuse(w, r, principal(r), err)
		return nil, false
	}
	s.m.streams.WithLabelValues(kind).Inc()
	return func() {
		s.m.streams.WithLabelValues(kind).Dec()
		left()
	}, true
}
