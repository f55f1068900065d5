package fence

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
)

// Header names a lock holder sends with each write to a protected resource.
const (
	HeaderToken = "Lock-Token" // the fencing token, a decimal uint64
	HeaderKey   = "Lock-Key"   // the lock key the token was issued for
	// HeaderSlot is a semaphore permit's slot (a decimal in 0..9999): its
	// writes are fenced per (key, slot), see SlotKey.
	HeaderSlot = "Lock-Slot"
)

// SlotKey is the Guard key of a semaphore's slot. A semaphore's tokens
// increase over all its permits, so "refuse lower than the highest seen"
// over the whole key would refuse valid holders of other slots; per slot,
// a slot's tokens strictly increase. It never equals a lock key (lock keys
// hold no '#').
func SlotKey(key string, slot int) string { return key + "#" + strconv.Itoa(slot) }

type ctxKey struct{}

// Fenced is what the middleware admitted: a request's lock key and token,
// and its slot when it carried Lock-Slot (Slotted).
type Fenced struct {
	Key     string
	Token   uint64
	Slot    int
	Slotted bool
}

// FromContext returns the lock key and token the middleware admitted for the
// request, if any.
func FromContext(ctx context.Context) (Fenced, bool) {
	f, ok := ctx.Value(ctxKey{}).(Fenced)
	return f, ok
}

// Middleware refuses requests whose Lock-Token is lower than the highest the
// guard has accepted for their Lock-Key, and runs the others one at a time per
// key (Guard.Do), so that a stale holder's write cannot interleave with a
// newer holder's. Requests whose method is in safe (e.g. GET, HEAD) pass
// without fencing. Refusals are application/problem+json:
//
//	428 code "lock_token_required": a header is missing
//	400 code "invalid_lock_token":  the token is not a positive decimal uint64
//	400 code "invalid_lock_slot":   Lock-Slot is not a decimal in 0..9999
//	409 code "stale_lock_token":    a newer holder has already written
//
// A request with Lock-Slot (a semaphore's permit) is fenced per (key, slot)
// under SlotKey. The handler finds what was admitted with FromContext.
func Middleware(g *Guard, safe ...string) func(http.Handler) http.Handler {
	pass := make(map[string]bool, len(safe))
	for _, m := range safe {
		pass[m] = true
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if pass[r.Method] {
				next.ServeHTTP(w, r)
				return
			}
			key, raw := r.Header.Get(HeaderKey), r.Header.Get(HeaderToken)
			if key == "" || raw == "" {
				problem(w, http.StatusPreconditionRequired, "lock_token_required",
					"writes must carry the "+HeaderKey+" and "+HeaderToken+" headers of a held lock")
				return
			}
			token, err := strconv.ParseUint(raw, 10, 64)
			if err != nil || token == 0 {
				problem(w, http.StatusBadRequest, "invalid_lock_token",
					HeaderToken+" must be a positive decimal integer")
				return
			}
			f, fenceKey := Fenced{Key: key, Token: token}, key
			if raw := r.Header.Get(HeaderSlot); raw != "" {
				slot, err := strconv.Atoi(raw)
				if err != nil || slot < 0 || slot > 9999 || strconv.Itoa(slot) != raw {
					problem(w, http.StatusBadRequest, "invalid_lock_slot", HeaderSlot+" must be a decimal slot in 0..9999")
					return
				}
				f.Slot, f.Slotted, fenceKey = slot, true, SlotKey(key, slot)
			}
			err = g.Do(fenceKey, token, func() error {
				ctx := context.WithValue(r.Context(), ctxKey{}, f)
				next.ServeHTTP(w, r.WithContext(ctx))
				return nil
			})
			var stale *StaleError
			if errors.As(err, &stale) {
				problem(w, http.StatusConflict, "stale_lock_token", stale.Error())
			}
		})
	}
}

func problem(w http.ResponseWriter, status int, code, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"type":   "about:blank",
		"title":  http.StatusText(status),
		"status": status,
		"detail": detail,
		"code":   code,
	})
}
