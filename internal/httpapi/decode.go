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
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"
	"github.com/lockd/lockd/backend"
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
	TTLMs     *jsonInt `json:"ttl_ms"`
	WaitMs    *jsonInt `json:"wait_ms"`
	Owner     *string  `json:"owner"`
	SessionID *string  `json:"session_id"`
	// LockDelayMs: see backend.LockDelayer; default Options.LockDelay.
	LockDelayMs *jsonInt `json:"lock_delay_ms"`
}

type renewBody struct {
	LeaseID *string  `json:"lease_id"`
	TTLMs   *jsonInt `json:"ttl_ms"`
}

type releaseBody struct {
	LeaseID *string `json:"lease_id"`
}

// acquireParams are a validated acquire request.
type acquireParams struct {
	ttl, wait time.Duration
	owner     string
	session   string // a session id instead of a TTL; ttl is then 0
	// lockDelay is the lock-delay asked for, when lockDelaySet.
	lockDelay    time.Duration
	lockDelaySet bool
}

// decode reads one JSON object into v, strictly: no unknown fields, no
// trailing data, no body over MaxBody. An empty body leaves v as it is. The
// body is JSON whatever its Content-Type says: curl -d sends form encoding by
// default, and refusing it would only make the API harder to call.
func (s *Server) decode(w http.ResponseWriter, r *http.Request, v any) error {
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(s.opts.BodyTimeout)) // not every connection has deadlines (HTTP/2, tests)
	buf := bodyBuffers.Get().(*bytes.Buffer)
	defer bodyBuffers.Put(buf)
	buf.Reset()
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, MaxBody))
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
	return decodeBytes(buf.Bytes(), v) // which keeps nothing of the bytes
}

// bodyBuffers hold request bodies while they are decoded (at most MaxBody
// and a read's worth).
var bodyBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func decodeBytes(body []byte, v any) error {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	if err := checkMembers(body, v); err != nil {
		return err
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

// checkMembers holds the body's top-level member names to the spec, which
// encoding/json does not: each must be exactly one of v's json tags
// (encoding/json matches them case-insensitively, so {"Owner":"x","OWNER":"y"}
// would set owner to "y") and appear once (encoding/json keeps the last
// duplicate). A body that is not a well-formed object passes, for Decode to
// refuse with its own message: the walk stops without an error where the
// object stops being well-formed. It walks the bytes itself, because a
// json.Decoder walking them token by token costs about 30 allocations per
// request (issue 15); TestCheckMembersAsDecoderDid holds it to the walk it
// replaced.
func checkMembers(body []byte, v any) error {
	t := reflect.TypeOf(v)
	if t.Kind() != reflect.Pointer || t.Elem().Kind() != reflect.Struct {
		return nil
	}
	names := memberNames(t.Elem())
	i := skipSpace(body, 0)
	if i == len(body) || body[i] != '{' {
		return nil
	}
	if i = skipSpace(body, i+1); i < len(body) && body[i] == '}' {
		return nil
	}
	var seen uint64 // bit k: names[k] was seen
	for {
		if i == len(body) || body[i] != '"' {
			return nil
		}
		end := stringEnd(body, i)
		if end < 0 {
			return nil
		}
		k, name, ok := member(names, body[i:end])
		if !ok {
			return nil
		}
		if k < 0 {
			return badRequest("unknown_field", fmt.Sprintf("unknown field %q (member names are case-sensitive)", name))
		}
		if seen&(1<<k) != 0 {
			return badRequest("invalid_json", fmt.Sprintf("member %q appears twice", names[k]))
		}
		seen |= 1 << k
		if i = skipSpace(body, end); i == len(body) || body[i] != ':' {
			return nil
		}
		start := i + 1
		if i = valueEnd(body, start); i < 0 || !json.Valid(body[start:i]) {
			return nil
		}
		if body[i] == '}' {
			return nil
		}
		i = skipSpace(body, i+1) // past the comma
	}
}

// memberNamesOf caches each body type's json member names.
var memberNamesOf sync.Map // reflect.Type → []string

// memberNames lists t's json member names (at most 64: checkMembers keeps
// one bit per name).
func memberNames(t reflect.Type) []string {
	if v, ok := memberNamesOf.Load(t); ok {
		return v.([]string)
	}
	var names []string
	for _, f := range reflect.VisibleFields(t) {
		if name, _, _ := strings.Cut(f.Tag.Get("json"), ","); name != "" && name != "-" {
			names = append(names, name)
		}
	}
	if len(names) > 64 {
		panic(fmt.Sprintf("httpapi: request body %v has more than 64 members", t))
	}
	memberNamesOf.Store(t, names)
	return names
}

// member finds the JSON string raw (quotes included) among names: its
// index, or -1 and its text when it is none of them. ok is false when raw
// is not a valid JSON string.
func member(names []string, raw []byte) (k int, name string, ok bool) {
	plain := true // printable ASCII without escapes: raw's text is itself
	for _, c := range raw[1 : len(raw)-1] {
		if c < 0x20 || c > 0x7e || c == '\\' {
			plain = false
			break
		}
	}
	text := raw[1 : len(raw)-1]
	if !plain {
		var s string // its own variable: name would escape on every call
		if json.Unmarshal(raw, &s) != nil {
			return -1, "", false
		}
		text = []byte(s)
	}
	for k, n := range names {
		if string(text) == n {
			return k, n, true
		}
	}
	return -1, string(text), true
}

// skipSpace is the index of the first byte at or after i that is not JSON
// white space.
func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// stringEnd is the index just past the JSON string that starts at b[i]
// (a quote), or -1 when it does not end.
func stringEnd(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return -1
}

// valueEnd is the index of the comma or closing brace that ends the
// member value starting at b[i] (outside strings, arrays and objects), or
// -1 when there is none. The value itself is checked by the caller.
func valueEnd(b []byte, i int) int {
	depth := 0
	for ; i < len(b); i++ {
		switch b[i] {
		case '"':
			if i = stringEnd(b, i); i < 0 {
				return -1
			}
			i-- // the loop steps past the closing quote
		case '{', '[':
			depth++
		case '}', ']':
			if depth == 0 {
				if b[i] == '}' {
					return i
				}
				return -1
			}
			depth--
		case ',':
			if depth == 0 {
				return i
			}
		}
	}
	return -1
}

// jsonInt is an integer field of a request: any JSON number whose value is
// an integer, as JSON Schema's integer says (1000, 1000.0, 1e3, 1.5e3), and
// nothing else (1000.5, "1000"). The check is exact, on the decimal digits,
// never through a float.
type jsonInt int64

func (n *jsonInt) UnmarshalJSON(b []byte) error {
	v, ok := integral(string(b))
	if !ok {
		what := "number " + string(b)
		if len(b) > 0 && (b[0] < '0' || b[0] > '9') && b[0] != '-' {
			what = "a non-number"
		}
		return &json.UnmarshalTypeError{Value: what, Type: reflect.TypeFor[int64]()}
	}
	*n = jsonInt(v)
	return nil
}

// integral is the value of the JSON number s when it is an integer that
// fits an int64.
func integral(s string) (int64, bool) {
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	mant, exp, hasExp := strings.Cut(strings.ToLower(s), "e")
	intPart, frac, _ := strings.Cut(mant, ".")
	digits := strings.TrimLeft(intPart+frac, "0")
	if intPart == "" || !allDigits(intPart) || !allDigits(frac) {
		return 0, false
	}
	if digits == "" {
		return 0, !hasExp || validExp(exp)
	}
	// point is where the decimal point falls in digits once the exponent
	// is applied; only zeros may follow it.
	point := len(digits) - len(frac)
	if hasExp {
		if !validExp(exp) {
			return 0, false
		}
		e, err := strconv.Atoi(exp)
		if err != nil || e > 19 || e < -MaxBody {
			// Far too big, or a fraction: no body holds MaxBody digits.
			return 0, false
		}
		point += e
	}
	if point < len(digits) {
		if strings.Trim(digits[max(point, 0):], "0") != "" {
			return 0, false
		}
		digits = digits[:point]
	} else {
		if point > 19 {
			return 0, false
		}
		digits += strings.Repeat("0", point-len(digits))
	}
	if neg {
		digits = "-" + digits
	}
	v, err := strconv.ParseInt(digits, 10, 64)
	return v, err == nil
}

func validExp(e string) bool {
	e = strings.TrimLeft(e, "+-")
	return e != "" && allDigits(e)
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func jsonError(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		if te.Field == "" {
			return badRequest("invalid_json", "the body must be a JSON object")
		}
		// The path names embedded structs too (acquireBody.ttl_ms in a
		// semaphore's body); the field is its last part, as the client
		// sent it (no body has nested objects).
		field := te.Field[strings.LastIndexByte(te.Field, '.')+1:]
		return badRequest("invalid_"+field, fmt.Sprintf("%s: want %s, got %s", field, jsonType(te.Type.Kind().String()), te.Value))
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

func msField(field string, v *jsonInt, def, lo, hi time.Duration) (time.Duration, error) {
	if v == nil {
		return def, nil
	}
	ms := int64(*v)
	d := time.Duration(ms) * time.Millisecond
	if ms < lo.Milliseconds() || ms > hi.Milliseconds() {
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
	if p.lockDelay, err = msField("lock_delay_ms", b.LockDelayMs, 0, 0, backend.MaxLockDelay); err != nil {
		return p, err
	}
	p.lockDelaySet = b.LockDelayMs != nil
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
		if utf8.RuneCountInString(*b.Owner) > lease.MaxOwner {
			return p, badRequest("invalid_owner", fmt.Sprintf("owner is limited to %d characters", lease.MaxOwner))
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
