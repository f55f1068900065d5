package httpapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/lease"
)

// problemBase prefixes every problem type URI.
const problemBase = "https://lockd.dev/problems/"

// Problem is an RFC 9457 problem+json body, with lockd's machine-readable
// code.
type Problem struct {
	Type   string  `json:"type"`
	Title  string  `json:"title"`
	Status int     `json:"status"`
	Detail string  `json:"detail"`
	Code   string  `json:"code"`
	Holder *holder `json:"holder,omitempty"` // lock_held only
	// Leader is the election's leader when a campaign gave up.
	Leader *leaderJSON `json:"leader,omitempty"`
	// Holders are the holders when an acquire of a semaphore
	// (*[]semHolderJSON) or an rwlock (*[]rwHolderJSON, an empty list when
	// nobody held at the give-up) gave up; Permits is a semaphore's current
	// size when an acquire asked for another.
	Holders any  `json:"holders,omitempty"`
	Permits *int `json:"permits,omitempty"`
	// LockDelay is the lock-delay that kept an acquire out.
	LockDelay *lockDelayJSON `json:"lock_delay,omitempty"`

	retryAfter time.Duration // when to come back, for 429 and 503
}

type holder struct {
	Owner     string `json:"owner"`
	Token     uint64 `json:"token"`
	ExpiresAt string `json:"expires_at"`
}

// errShuttingDown ends long polls when lockd stops.
var errShuttingDown = errors.New("lockd is shutting down")

// errorTable is the one place errors become HTTP statuses and codes.
var errorTable = []struct {
	err    error
	status int
	code   string
	title  string
}{
	{backend.ErrHeld, http.StatusConflict, "lock_held", "Lock held by someone else"},
	{backend.ErrLeaseExpired, http.StatusGone, "lease_expired", "Lease no longer holds the lock"},
	{backend.ErrSessionExpired, http.StatusGone, "session_expired", "Session expired"},
	{backend.ErrSessionBound, http.StatusConflict, "session_bound", "Lease renewed only through its session"},
	{backend.ErrPermitsMismatch, http.StatusConflict, "permits_mismatch", "Semaphore has another number of permits"},
	{backend.ErrIdempotencyKeyReused, http.StatusUnprocessableEntity, "idempotency_key_reused", "Idempotency-Key used by another request"},
	{errShuttingDown, http.StatusServiceUnavailable, "shutting_down", "lockd is shutting down"},
	{errClockSkew, http.StatusServiceUnavailable, "clock_skew", "Replica clock outside the declared skew bound"},
	{backend.ErrUnavailable, http.StatusServiceUnavailable, "backend_unavailable", "Lock backend unavailable"},
}

// requestError is a problem with the request itself (4xx).
type requestError struct {
	status     int
	code       string
	detail     string
	retryAfter time.Duration // 429: sent as Retry-After
}

func (e *requestError) Error() string { return e.detail }

func badRequest(code, detail string) error {
	return &requestError{status: http.StatusBadRequest, code: code, detail: detail}
}

var requestTitles = map[int]string{
	http.StatusBadRequest:            "Bad request",
	http.StatusNotFound:              "Not found",
	http.StatusMethodNotAllowed:      "Method not allowed",
	http.StatusRequestEntityTooLarge: "Request body too large",
	http.StatusRequestTimeout:        "Request body too slow",
	http.StatusUnauthorized:          "Unauthorized",
	http.StatusForbidden:             "Forbidden",
	http.StatusTooManyRequests:       "Too many requests",
	http.StatusNotImplemented:        "Not implemented",
}

// problemFor maps any error to its problem.
func problemFor(err error) Problem {
	var re *requestError
	if errors.As(err, &re) {
		return Problem{Type: problemBase + re.code, Title: requestTitles[re.status], Status: re.status, Detail: re.detail, Code: re.code, retryAfter: re.retryAfter}
	}
	for _, row := range errorTable {
		if errors.Is(err, row.err) {
			p := Problem{Type: problemBase + row.code, Title: row.title, Status: row.status, Detail: err.Error(), Code: row.code}
			if row.status == http.StatusServiceUnavailable {
				p.retryAfter = time.Second
			}
			var he *backend.HeldError
			if errors.As(err, &he) && he.Holder != nil {
				p.Holder = &holder{Owner: he.Holder.Owner, Token: he.Holder.Token, ExpiresAt: lease.Format(he.Holder.ExpiresAt)}
			}
			var ne *backend.NotLeaderError
			if errors.As(err, &ne) {
				p.Leader = toLeaderJSON(ne.Leader)
			}
			semaphoreProblem(err, &p)
			p.LockDelay = toLockDelayJSON(delayOfRefusal(err))
			var rwe *backend.RWHeldError
			if errors.As(err, &rwe) {
				hs := toRWHoldersJSON(rwe.Holders)
				p.Holders = &hs
			}
			return p
		}
	}
	return Problem{Type: problemBase + "internal_error", Title: "Internal error", Status: http.StatusInternalServerError,
		Detail: "an unexpected error occurred; see lockd's log", Code: "internal_error"}
}

func writeProblem(w http.ResponseWriter, p Problem) {
	w.Header().Set("Content-Type", "application/problem+json")
	if p.retryAfter > 0 {
		w.Header().Set("Retry-After", retryAfter(p.retryAfter))
	}
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
