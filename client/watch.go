package client

import (
	"context"
	"encoding/json"
	"time"
)

// KeyEvent is one event of a lock key's event stream.
type KeyEvent struct {
	// Type is "snapshot", "acquired", "released", "expired" or "resync";
	// empty on the final event, whose Err is set.
	Type string
	// ID is the server's cursor (what a reconnect sends as Last-Event-ID);
	// empty on resync.
	ID string
	// Held is set for a snapshot of a held key; Key names the key.
	Key  string
	Held bool
	// Token is the grant's fencing token (a held snapshot, acquired,
	// released, expired); Owner and ExpiresAt come with a held snapshot and
	// with acquired.
	Token     uint64
	Owner     string
	ExpiresAt time.Time
	// Reason says why for resync.
	Reason string
	// Err is set on the last event only, as for Observe.
	Err error
}

// Watch follows the lock key: a snapshot first, then acquired and its end
// (released or expired) for every grant, in token order. Across a dropped
// connection, a server restart or a lockd's shutdown it reconnects (with
// back-off) sending Last-Event-ID: the server resumes where the stream left
// off, or sends "resync" and a fresh snapshot; events may repeat across a
// resume (dedupe by ID). The first connection, the last event and reading
// the channel are as for Observe.
func (c *Client) Watch(ctx context.Context, key string) (<-chan KeyEvent, error) {
	return follow(ctx, c, lockPath(key, "events"), decodeKeyEvent, func(err error) KeyEvent { return KeyEvent{Err: err} })
}

func decodeKeyEvent(f sseFrame) (KeyEvent, bool) {
	ev := KeyEvent{Type: f.event, ID: f.id}
	var d struct {
		Key       string `json:"key"`
		Held      bool   `json:"held"`
		Token     uint64 `json:"token"`
		Owner     string `json:"owner"`
		ExpiresAt string `json:"expires_at"`
		Reason    string `json:"reason"`
	}
	switch f.event {
	case "snapshot", "acquired", "released", "expired", "resync":
		if json.Unmarshal([]byte(f.data), &d) != nil {
			return ev, false
		}
	default:
		return ev, false // shutdown (we reconnect) or an event this client does not know
	}
	ev.Key, ev.Held, ev.Token, ev.Owner, ev.Reason = d.Key, d.Held, d.Token, d.Owner, d.Reason
	if d.ExpiresAt != "" {
		ev.ExpiresAt, _ = time.Parse(time.RFC3339Nano, d.ExpiresAt)
	}
	return ev, true
}
