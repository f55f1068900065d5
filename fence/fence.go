// Package fence is the protected resource's side of fencing: it remembers the
// highest lock token seen per lock key and refuses writes that carry a lower
// one, so that a holder whose lease ran out while it was paused cannot
// overwrite what the next holder wrote.
//
// A lock alone cannot stop a paused holder: by the time it resumes, its lease
// may have expired and the lock been granted again. Only the resource can
// tell, by comparing the token the writer presents with the highest token it
// has accepted. lockd's tokens strictly increase per key, so "lower than the
// highest seen" means "a lease older than one that already wrote".
//
// The Guard keeps its state in memory. A resource that must survive its own
// restart should store the accepted token next to the data it protects and
// load it back with Guard.Observe before serving writes.
package fence

import (
	"errors"
	"fmt"
	"sync"
)

// ErrStale is matched (errors.Is) by the error a Guard returns for a token
// lower than the highest it has accepted for the key.
var ErrStale = errors.New("fence: stale lock token")

// StaleError says which token was refused and which one is the highest.
type StaleError struct {
	Key     string
	Token   uint64 // the refused token
	Highest uint64 // the highest token accepted for Key
}

func (e *StaleError) Error() string {
	return fmt.Sprintf("fence: token %d for lock %q is stale (highest accepted: %d)", e.Token, e.Key, e.Highest)
}

func (e *StaleError) Unwrap() error { return ErrStale }

// Guard remembers the highest token per lock key. The zero value is ready to
// use; a Guard must not be copied after first use. It is safe for concurrent
// use. It keeps one small entry per lock key it has seen, for its lifetime:
// forgetting a key would let a stale token in again.
type Guard struct {
	mu   sync.Mutex
	keys map[string]*keyState
}

// keyState serialises Do calls on one key so that the check and the write it
// guards happen as one step: without it, a stale writer could pass the check,
// stall, and write after a newer holder.
type keyState struct {
	mu      sync.Mutex // held across Do's fn
	highest uint64     // guarded by Guard.mu
}

func (g *Guard) state(key string) *keyState {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.keys == nil {
		g.keys = make(map[string]*keyState)
	}
	s := g.keys[key]
	if s == nil {
		s = &keyState{}
		g.keys[key] = s
	}
	return s
}

// admit records token when it is not lower than the highest for key.
// An equal token is the same holder writing again, and is accepted.
func (g *Guard) admit(key string, s *keyState, token uint64) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if token < s.highest {
		return &StaleError{Key: key, Token: token, Highest: s.highest}
	}
	s.highest = token
	return nil
}

// Check accepts token for key when it is at least the highest accepted so far
// and records it; otherwise it returns a *StaleError (matching ErrStale).
//
// Check alone does not order the caller's write after it: use Do when the
// write must not interleave with a newer holder's.
func (g *Guard) Check(key string, token uint64) error {
	return g.admit(key, g.state(key), token)
}

// Do runs fn when token is accepted for key, holding the key's turn while fn
// runs, so that no other Do on the same key (in particular a newer holder's)
// runs between the check and fn's write. It returns the *StaleError without
// calling fn when the token is stale, and fn's error otherwise.
//
// The token is recorded even when fn fails: once a holder has presented a
// token, every older lease is stale whatever happened to the write.
func (g *Guard) Do(key string, token uint64, fn func() error) error {
	s := g.state(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := g.admit(key, s, token); err != nil {
		return err
	}
	return fn()
}

// Observe raises key's highest token to token if it is higher, as when a
// resource reloads the token it stored with its data after a restart.
func (g *Guard) Observe(key string, token uint64) {
	s := g.state(key)
	g.mu.Lock()
	defer g.mu.Unlock()
	if token > s.highest {
		s.highest = token
	}
}

// Highest returns the highest token accepted for key, and false when none
// has been. (lockd never issues token 0, so 0 means "none".)
func (g *Guard) Highest(key string) (uint64, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.keys[key]
	if s == nil || s.highest == 0 {
		return 0, false
	}
	return s.highest, true
}
