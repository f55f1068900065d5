package httpapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"

	"github.com/lockd/lockd/internal/auth"
)

type principalKey struct{}

// principal is the caller a request was authenticated as.
func principal(r *http.Request) *auth.Principal {
	if p, ok := r.Context().Value(principalKey{}).(*auth.Principal); ok {
		return p
	}
	return auth.Anonymous
}

// authenticate finds the caller: a verified client certificate's names
// first, then a bearer token. Without a tokens file every caller is
// anonymous with every right.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.opts.Auth == nil || r.URL.Path == "/healthz" || r.URL.Path == "/readyz" {
			next.ServeHTTP(w, r)
			return
		}
		var p *auth.Principal
		if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
			leaf := r.TLS.VerifiedChains[0][0]
			p = s.opts.Auth.Cert(append([]string{leaf.Subject.CommonName}, leaf.DNSNames...)...)
		}
		if h := r.Header.Get("Authorization"); p == nil && h != "" {
			if tok, ok := strings.CutPrefix(h, "Bearer "); ok {
				p = s.opts.Auth.Token(strings.TrimSpace(tok))
			}
		}
		if p == nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="lockd"`)
			s.refuse(w, r, nil, &requestError{status: http.StatusUnauthorized, code: "unauthorized",
				detail: "send Authorization: Bearer <token> (or a client certificate lockd knows)"})
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
	})
}

// allow checks that the caller holds right on key, writing 403 if not.
func (s *Server) allow(w http.ResponseWriter, r *http.Request, right auth.Right, key string) bool {
	p := principal(r)
	if p.Can(right, key) {
		return true
	}
	s.refuse(w, r, p, &requestError{status: http.StatusForbidden, code: "forbidden",
		detail: "this token may not " + string(right) + " this key"})
	return false
}

// refuse writes a refusal and audits it.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, p *auth.Principal, err error) {
	who := "unauthenticated"
	if p != nil {
		who = p.Name
	}
	s.audit("refused", r, "principal", who, "code", problemFor(err).Code)
	s.fail(w, r, err)
}

// auditing reports whether audit writes anything: callers on the hot path
// check it first, so that no attribute is built for a line not written.
func (s *Server) auditing() bool { return s.opts.Audit != nil }

// audit writes one structured line about a lock event, when an audit log
// is configured. Lease ids are capabilities: only a hash of one is logged.
func (s *Server) audit(event string, r *http.Request, attrs ...any) {
	if s.opts.Audit == nil {
		return
	}
	base := []any{"event", event, "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr}
	if p, ok := r.Context().Value(principalKey{}).(*auth.Principal); ok {
		base = append(base, "principal", p.Name)
	}
	s.opts.Audit.Info("lock", append(base, attrs...)...)
}

// leaseHash is what the audit log shows of a lease id.
func leaseHash(id string) string {
	h := sha256.Sum256([]byte(id))
	return hex.EncodeToString(h[:6])
}
