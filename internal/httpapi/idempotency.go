package httpapi

import (
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"

	"github.com/lockd/lockd/backend"
	"github.com/lockd/lockd/internal/auth"
)

// Idempotent acquires (draft-ietf-httpapi-idempotency-key-header). A client
// sends a fresh Idempotency-Key with each logical acquire and the same one
// on every retry of it. The backend keeps the record; this layer only
// parses the header, scopes it to the caller and the lock key (so that one
// caller can neither read nor block another's record), and fingerprints the
// fields that define the grant.

const (
	idempotencyHeader = "Idempotency-Key"
	replayedHeader    = "Idempotent-Replayed"
	maxIdempotencyKey = 255
)

// parseIdempotencyKey returns the request's Idempotency-Key, "" when there
// is none. The draft makes it a structured-field string ("..."); a bare
// token is taken as well. The key is 1..255 visible ASCII characters.
func parseIdempotencyKey(h http.Header) (string, error) {
	vs := h.Values(idempotencyHeader)
	if len(vs) == 0 {
		return "", nil
	}
	bad := func(why string) error {
		return badRequest("invalid_idempotency_key", "Idempotency-Key "+why+"; send one of 1 to 255 visible ASCII characters, fresh for each logical acquire, e.g. \"8e03978e-40d5-43e8-bc93-6894a57f9324\"")
	}
	if len(vs) > 1 {
		return "", bad("was given more than once")
	}
	v := strings.TrimSpace(vs[0])
	if strings.HasPrefix(v, `"`) {
		if len(v) < 2 || !strings.HasSuffix(v, `"`) {
			return "", bad("opens a quoted string it does not close")
		}
		var sb strings.Builder
		inner := v[1 : len(v)-1]
		for i := 0; i < len(inner); i++ {
			c := inner[i]
			switch c {
			case '\\':
				if i+1 == len(inner) || inner[i+1] != '"' && inner[i+1] != '\\' {
					return "", bad("has a backslash that escapes neither \" nor \\")
				}
				i++
				c = inner[i]
			case '"':
				return "", bad("has an unescaped quote inside its quoted string")
			}
			sb.WriteByte(c)
		}
		v = sb.String()
	}
	if v == "" {
		return "", bad("is empty")
	}
	if len(v) > maxIdempotencyKey {
		return "", bad("is " + strconv.Itoa(len(v)) + " characters long")
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x21 || v[i] > 0x7e {
			return "", bad("holds a character that is not visible ASCII")
		}
	}
	return v, nil
}

// idempotency is the backend's view of an acquire's Idempotency-Key: a
// record name scoped to (caller, lock key, header) and a fingerprint of the
// grant-defining fields (owner, TTL; not wait_ms, which a retry shortens).
func idempotency(who *auth.Principal, key, header string, p acquireParams) backend.Idempotency {
	if header == "" {
		return backend.Idempotency{}
	}
	scope := sha256.Sum256([]byte("lockd-idem-v1\x00" + who.Name + "\x00" + key + "\x00" + header))
	in := "lockd-fp-v1\x00" + strconv.FormatInt(p.ttl.Milliseconds(), 10) + "\x00" + p.owner
	if p.session != "" {
		in += "\x00session\x00" + leaseHash(p.session) // a retry in another session is another request
	}
	if p.lockDelay > 0 {
		in += "\x00delay\x00" + strconv.FormatInt(p.lockDelay.Milliseconds(), 10)
	}
	fp := sha256.Sum256([]byte(in))
	return backend.Idempotency{
		Key:         base64.RawURLEncoding.EncodeToString(scope[:]),
		Fingerprint: base64.RawURLEncoding.EncodeToString(fp[:16]),
	}
}

// errIdempotencyUnsupported answers a keyed acquire on a backend that
// cannot keep the record; nothing was done, so the client may send the
// acquire again without the header (and without retrying it blindly).
var errIdempotencyUnsupported = &requestError{status: http.StatusNotImplemented, code: "idempotency_unsupported",
	detail: "this lockd's backend does not honour Idempotency-Key on acquire; nothing was done: send the acquire without the header (and do not retry it after a lost reply)"}
