package httpapi

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
)

// A handler that panics answers 500 internal_error as problem+json, and the
// server goes on; http.ErrAbortHandler keeps its meaning (abort quietly).
func TestRecoverer(t *testing.T) {
	s := New(nil, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	h := s.recoverer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		panic("boom")
	}))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/v1/locks/a", nil))
	if rec.Code != http.StatusInternalServerError {
		t.Fatalf("status %d, want 500", rec.Code)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type %q", ct)
	}
	var p Problem
	if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
		t.Fatal(err)
	}
	if p.Code != "internal_error" || p.Status != 500 || p.Type != problemBase+"internal_error" {
		t.Fatalf("problem %+v", p)
	}

	abort := s.recoverer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		panic(http.ErrAbortHandler)
	}))
	defer func() {
		if v := recover(); v != http.ErrAbortHandler {
			t.Fatalf("recovered %v, want http.ErrAbortHandler passed on", v)
		}
	}()
	abort.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
	t.Fatal("ErrAbortHandler was swallowed")
}

// Over a real listener a panic is one 500 and the next request is served.
func TestPanicDoesNotStopServing(t *testing.T) {
	s := New(nil, Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	calls := 0
	srv := httptest.NewServer(s.recoverer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		if calls == 1 {
			panic("first call")
		}
		w.WriteHeader(http.StatusNoContent)
	})))
	defer srv.Close()
	for i, want := range []int{500, 204} {
		resp, err := http.Get(srv.URL)
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("call %d: status %d, want %d", i, resp.StatusCode, want)
		}
	}
}
