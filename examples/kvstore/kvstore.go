// Package kvstore is a tiny in-memory key-value store that refuses stale lock
// holders: the resource side of fencing with lockd, as an example. Command
// cmd/kvstore serves it.
package kvstore

import (
	"io"
	"net/http"
	"strconv"
	"sync"

	"github.com/lockd/lockd/fence"
)

// Store is an in-memory key-value store that accepts writes only from the
// current lock holder: every PUT or DELETE carries Lock-Key and Lock-Token,
// and a token lower than one already seen for that lock is refused with 409.
//
// A semaphore's permit holders add Lock-Slot, and are fenced per (key,
// slot): a semaphore's tokens increase over all its permits, so a holder of
// another slot may validly carry a lower token than the last writer, while a
// permit that expired and whose slot went to a newer holder is refused.
type Store struct {
	guard fence.Guard

	mu   sync.Mutex
	data map[string]entry
}

type entry struct {
	value []byte
	token uint64 // the token of the write that stored it
	slot  string // and its Lock-Slot, if it was a permit's
}

// NewStore returns an empty store.
func NewStore() *Store { return &Store{data: make(map[string]entry)} }

// Handler serves GET, PUT and DELETE on /kv/{name}. Reads are not fenced;
// they show the stored write's Lock-Token (and Lock-Slot, for a permit's).
func (s *Store) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /kv/{name}", s.get)
	mux.HandleFunc("PUT /kv/{name}", s.put)
	mux.HandleFunc("DELETE /kv/{name}", s.del)
	return fence.Middleware(&s.guard, http.MethodGet, http.MethodHead)(mux)
}

func (s *Store) get(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	e, ok := s.data[r.PathValue("name")]
	s.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	w.Header().Set(fence.HeaderToken, strconv.FormatUint(e.token, 10))
	if e.slot != "" {
		w.Header().Set(fence.HeaderSlot, e.slot)
	}
	w.Write(e.value)
}

// put runs inside the middleware's turn for the lock key, so no newer
// holder's write can slip between the token check and this write.
func (s *Store) put(w http.ResponseWriter, r *http.Request) {
	f, _ := fence.FromContext(r.Context())
	v, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	e := entry{value: v, token: f.Token}
	if f.Slotted {
		e.slot = strconv.Itoa(f.Slot)
	}
	s.mu.Lock()
	s.data[r.PathValue("name")] = e
	s.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

func (s *Store) del(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	delete(s.data, r.PathValue("name"))
	s.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}
