// Package auth decides who may do what to which keys. It reads the tokens
// file, authenticates bearer tokens (in constant time) and client
// certificate names, and answers rights questions about key prefixes.
//
// It never logs or returns a secret: the file keeps tokens as SHA-256
// hashes (or plain tokens, hashed on load), and a Principal carries only the
// entry's name and rights.
package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
)

// Right is one kind of access.
type Right string

const (
	// RightLock allows acquire, renew and release on keys under the
	// principal's prefixes.
	RightLock Right = "lock"
	// RightRead allows inspecting and listing keys under the prefixes.
	RightRead Right = "read"
	// RightAdmin allows everything on every key, and /metrics.
	RightAdmin Right = "admin"
)

// Principal is an authenticated caller.
type Principal struct {
	Name      string
	Prefixes  []string // key prefixes; "" means every key
	Rights    map[Right]bool
	MaxLeases int     // held leases at once; 0 means the server default
	Rate      float64 // requests per second; 0 means the server default
}

// Anonymous is the principal of every request when no tokens file is given.
var Anonymous = &Principal{
	Name:     "anonymous",
	Prefixes: []string{""},
	Rights:   map[Right]bool{RightLock: true, RightRead: true, RightAdmin: true},
}

// Can reports whether p holds right r on key. Admin implies every right on
// every key.
func (p *Principal) Can(r Right, key string) bool {
	if p.Rights[RightAdmin] {
		return true
	}
	if !p.Rights[r] {
		return false
	}
	for _, pre := range p.Prefixes {
		if strings.HasPrefix(key, pre) {
			return true
		}
	}
	return false
}

// CanList reports whether p may list keys under prefix: every key the
// listing could show must be one p may read.
func (p *Principal) CanList(prefix string) bool {
	if p.Rights[RightAdmin] {
		return true
	}
	if !p.Rights[RightRead] {
		return false
	}
	for _, pre := range p.Prefixes {
		if strings.HasPrefix(prefix, pre) {
			return true
		}
	}
	return false
}

// fileEntry is one token in the tokens file.
type fileEntry struct {
	Name        string   `json:"name"`
	Token       string   `json:"token,omitempty"`        // the secret itself; prefer token_sha256
	TokenSHA256 string   `json:"token_sha256,omitempty"` // hex SHA-256 of the secret
	CertNames   []string `json:"cert_names,omitempty"`   // client-certificate CN or DNS SANs that map to this entry
	Prefixes    []string `json:"prefixes"`
	Rights      []Right  `json:"rights"`
	MaxLeases   int      `json:"max_leases,omitempty"`
	RatePerSec  float64  `json:"rate_per_sec,omitempty"`
}

type file struct {
	Tokens []fileEntry `json:"tokens"`
}

type entry struct {
	hash      [sha256.Size]byte
	hasToken  bool
	principal *Principal
}

type table struct {
	entries []entry
	certs   map[string]*Principal
}

// parse reads a tokens file's contents. Every entry needs a unique name,
// rights from lock/read/admin, at least one prefix unless it is admin, and a
// token (or token_sha256) or cert_names.
func parse(data []byte) (*table, error) {
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	var f file
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("auth file: %w", err)
	}
	if dec.More() {
		return nil, errors.New("auth file: trailing data after the JSON object")
	}
	t := &table{certs: map[string]*Principal{}}
	names := map[string]bool{}
	hashes := map[[sha256.Size]byte]string{}
	for i, e := range f.Tokens {
		where := fmt.Sprintf("auth file: tokens[%d]", i)
		if e.Name == "" {
			return nil, fmt.Errorf("%s: name is required", where)
		}
		where += fmt.Sprintf(" (%q)", e.Name)
		if names[e.Name] {
			return nil, fmt.Errorf("%s: duplicate name", where)
		}
		names[e.Name] = true
		p := &Principal{Name: e.Name, Prefixes: e.Prefixes, Rights: map[Right]bool{}, MaxLeases: e.MaxLeases, Rate: e.RatePerSec}
		for _, r := range e.Rights {
			switch r {
			case RightLock, RightRead, RightAdmin:
				p.Rights[r] = true
			default:
				return nil, fmt.Errorf("%s: unknown right %q (want lock, read or admin)", where, r)
			}
		}
		if len(p.Rights) == 0 {
			return nil, fmt.Errorf("%s: no rights", where)
		}
		if len(e.Prefixes) == 0 && !p.Rights[RightAdmin] {
			return nil, fmt.Errorf(`%s: no prefixes (use [""] for every key)`, where)
		}
		if e.MaxLeases < 0 || e.RatePerSec < 0 {
			return nil, fmt.Errorf("%s: max_leases and rate_per_sec must not be negative", where)
		}
		en := entry{principal: p}
		switch {
		case e.Token != "" && e.TokenSHA256 != "":
			return nil, fmt.Errorf("%s: give token or token_sha256, not both", where)
		case e.Token != "":
			if len(e.Token) < 16 {
				return nil, fmt.Errorf("%s: token shorter than 16 characters", where)
			}
			en.hash, en.hasToken = sha256.Sum256([]byte(e.Token)), true
		case e.TokenSHA256 != "":
			b, err := hex.DecodeString(e.TokenSHA256)
			if err != nil || len(b) != sha256.Size {
				return nil, fmt.Errorf("%s: token_sha256 must be 64 hex digits", where)
			}
			copy(en.hash[:], b)
			en.hasToken = true
		}
		if en.hasToken {
			if other, dup := hashes[en.hash]; dup {
				return nil, fmt.Errorf("%s: same token as %q", where, other)
			}
			hashes[en.hash] = e.Name
		}
		for _, cn := range e.CertNames {
			if cn == "" {
				return nil, fmt.Errorf("%s: empty cert name", where)
			}
			if _, dup := t.certs[cn]; dup {
				return nil, fmt.Errorf("%s: cert name %q given twice", where, cn)
			}
			t.certs[cn] = p
		}
		if !en.hasToken && len(e.CertNames) == 0 {
			return nil, fmt.Errorf("%s: needs token, token_sha256 or cert_names", where)
		}
		t.entries = append(t.entries, en)
	}
	return t, nil
}

// token finds the principal of a bearer token. Every entry is compared, in
// constant time, so the time taken says nothing of which entry (if any)
// was close.
func (t *table) token(secret string) *Principal {
	h := sha256.Sum256([]byte(secret))
	var found *Principal
	for i := range t.entries {
		e := &t.entries[i]
		if e.hasToken && subtle.ConstantTimeCompare(h[:], e.hash[:]) == 1 {
			found = e.principal
		}
	}
	return found
}

// Store holds the current tokens table; Reload swaps it atomically so that
// requests in flight keep the table they started with.
type Store struct {
	path string
	cur  atomic.Pointer[table]
}

// Load reads the tokens file at path.
func Load(path string) (*Store, error) {
	s := &Store{path: path}
	if err := s.Reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// Reload reads the file again. On error the previous table stays in force.
func (s *Store) Reload() error {
	data, err := os.ReadFile(s.path)
	if err != nil {
		return fmt.Errorf("auth file: %w", err)
	}
	t, err := parse(data)
	if err != nil {
		return err
	}
	s.cur.Store(t)
	return nil
}

// Token returns the principal of a bearer token, or nil.
func (s *Store) Token(secret string) *Principal {
	return s.cur.Load().token(secret)
}

// Cert returns the principal a client-certificate name maps to, or nil.
func (s *Store) Cert(names ...string) *Principal {
	t := s.cur.Load()
	for _, n := range names {
		if p := t.certs[n]; p != nil {
			return p
		}
	}
	return nil
}

// Size is the number of entries in force (for the start-up log line).
func (s *Store) Size() int { return len(s.cur.Load().entries) }
