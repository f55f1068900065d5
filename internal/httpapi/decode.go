package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/lockd/lockd/internal/lease"
)

// MaxBody is the largest request body accepted.
const MaxBody = 64 << 10

// MaxKey is the longest lock key, in bytes.
const MaxKey = 200

// ValidKey reports whether k is a lock key: 1..200 bytes of [A-Za-z0-9._:-],
// starting with a letter or digit.
func ValidKey(k string) bool {
	if len(k) == 0 || len(k) > MaxKey || !alnum(k[0]) {
		return false
	}
	for i := 1; i < len(k); i++ {
		if c := k[i]; !alnum(c) && c != '.' && c != '_' && c != ':' && c != '-' {
			return false
		}
	}
	return true
}

func alnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// keyParam is the {key} of r's route, percent-decoded (generated clients
// and Python's urllib.parse.quote send reports%3Anightly for
// reports:nightly) and checked: a key that is valid once decoded is accepted
// on every route; one that decodes to something invalid, such as a%2Fb
// (a '/'), is refused.
func keyParam(r *http.Request) (string, error) { return pathName(r, "key") }

// pathName is the route's parameter param (a lock key, an election name),
// percent-decoded and checked as keyParam says.
func pathName(r *http.Request, param string) (string, error) {
	raw := chi.URLParam(r, param)
	k, err := url.PathUnescape(raw)
	if err != nil {
		return raw, badRequest("invalid_key", fmt.Sprintf("%s %q is not validly percent-encoded", param, raw))
	}
	return k, checkKey(k)
}

func checkKey(k string) error {
	if !ValidKey(k) {
		return badRequest("invalid_key", fmt.Sprintf("key must be 1..%d bytes of A-Z a-z 0-9 . _ : - starting with a letter or digit", MaxKey))
	}
	return nil
}

// checkPrefix accepts what may start a key (or nothing).
func checkPrefix(field, p string) error {
	if p == "" {
		return nil
	}
	if !ValidKey(p) {
		return badRequest("invalid_"+field, fmt.Sprintf("%s must be empty or the start of a valid key", field))
	}
	return nil
}

type acquireBody struct {
	TTLMs     *int64  `json:"ttl_ms"`
	WaitMs    *int64  `json:"wait_ms"`
	Owner     *string `json:"owner"`
	SessionID *string `json:"session_id"`
}

type renewBody struct {
	LeaseID *string `json:"lease_id"`
	TTLMs   *int64  `json:"ttl_ms"`
}

type releaseBody struct {
	LeaseID *string `json:"lease_id"`
}

// acquireParams are a validated acquire request.
type acquireParams struct {
	ttl, wait time.Duration
	owner     string
	session   string // a session id instead of a TTL; ttl is then 0
}

// decode reads one JSON object into v, strictly: no unknown fields, no
// trailing data, no body over MaxBody. An empty body leaves v as it is. The
// body is JSON whatever its Content-Type says: curl -d sends form encoding by
// default, and refusing it would only make the API harder to call.
func (s *Server) decode(w http.ResponseWriter, r *http.Request, v any) error {
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(s.opts.BodyTimeout)) // not every connection has deadlines (HTTP/2, tests)
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		// Keep the deadline: the connection is closed after the answer,
		// and nothing may wait for the rest of a body that is not coming.
		w.Header().Set("Connection", "close")
	} else {
		_ = rc.SetReadDeadline(time.Time{})
	}
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &requestError{status: http.StatusRequestEntityTooLarge, code: "body_too_large",
				detail: fmt.Sprintf("request bodies are limited to %d bytes", MaxBody)}
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return &requestError{status: http.StatusRequestTimeout, code: "body_timeout",
				detail: fmt.Sprintf("the request body did not arrive within %v", s.opts.BodyTimeout)}
		}
		return badRequest("invalid_json", "could not read the request body")
	}
	return decodeBytes(body, v)
}

func decodeBytes(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return badRequest("invalid_json", "the body must hold exactly one JSON object")
	}
	return nil
}

func jsonError(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		if te.Field == "" {
			return badRequest("invalid_json", "the body must be a JSON object")
		}
		return badRequest("invalid_"+te.Field, fmt.Sprintf("%s: want %s, got %s", te.Field, jsonType(te.Type.Kind().String()), te.Value))
	}
	if msg := err.Error(); strings.HasPrefix(msg, "json: unknown field ") {
		return badRequest("unknown_field", "unknown field "+strings.TrimPrefix(msg, "json: unknown field "))
	}
	return badRequest("invalid_json", "malformed JSON: "+err.Error())
}

func jsonType(kind string) string {
	switch kind {
	case "int64", "int", "uint64":
		return "an integer"
	case "ptr", "string":
		return "a string"
	}
	return kind
}

func msField(field string, v *int64, def, lo, hi time.Duration) (time.Duration, error) {
	if v == nil {
		return def, nil
	}
	d := time.Duration(*v) * time.Millisecond
	if *v < lo.Milliseconds() || *v > hi.Milliseconds() {
		return 0, badRequest("invalid_"+field, fmt.Sprintf("%s must be between %d and %d", field, lo.Milliseconds(), hi.Milliseconds()))
	}
	return d, nil
}

func (b acquireBody) params() (acquireParams, error) {
	var p acquireParams
	var err error
	if p.ttl, err = msField("ttl_ms", b.TTLMs, lease.DefaultTTL, lease.MinTTL, lease.MaxTTL); err != nil {
		return p, err
	}
	if p.wait, err = msField("wait_ms", b.WaitMs, 0, 0, lease.MaxWait); err != nil {
		return p, err
	}
	if b.SessionID != nil {
		if b.TTLMs != nil {
			return p, badRequest("invalid_session_id", "send ttl_ms or session_id, not both")
		}
		if p.session, err = checkSessionID(b.SessionID); err != nil {
			return p, err
		}
		p.ttl = 0 // the session's
	}
	if b.Owner != nil {
		if len(*b.Owner) > lease.MaxOwner {
			return p, badRequest("invalid_owner", fmt.Sprintf("owner is limited to %d bytes", lease.MaxOwner))
		}
		p.owner = *b.Owner
	}
	return p, nil
}

func checkLeaseID(id *string) (string, error) {
	if id == nil || *id == "" {
		return "", badRequest("invalid_lease_id", "lease_id is required")
	}
	if !lease.ValidID(*id) {
		return "", badRequest("invalid_lease_id", "lease_id is not one lockd issues")
	}
	return *id, nil
}
