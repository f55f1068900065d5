package httpapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// checkMembersByDecoder is checkMembers as it was, walking the body with a
// json.Decoder token by token: the reference the byte walk must match.
func checkMembersByDecoder(body []byte, v any) error {
	t := reflect.TypeOf(v)
	if t.Kind() != reflect.Pointer || t.Elem().Kind() != reflect.Struct {
		return nil
	}
	known := map[string]bool{}
	for _, f := range reflect.VisibleFields(t.Elem()) {
		if name, _, _ := strings.Cut(f.Tag.Get("json"), ","); name != "" && name != "-" {
			known[name] = true
		}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil
		}
		name, _ := tok.(string)
		if !known[name] {
			return badRequest("unknown_field", fmt.Sprintf("unknown field %q (member names are case-sensitive)", name))
		}
		if seen[name] {
			return badRequest("invalid_json", fmt.Sprintf("member %q appears twice", name))
		}
		seen[name] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return nil
		}
	}
	return nil
}

var memberBodies = []string{
	``, ` `, `{}`, ` { } `, `[]`, `"x"`, `1`, `null`, `{`, `}`, `{"owner"`, `{"owner" 1}`, `{"bogus" 1}`, `{"bogus"`,
	`{"owner":"x"}`, `{"owner":"x","owner":"y"}`, `{"owner":"x","owner"`, `{"Owner":"x"}`, `{"OWNER":"x","owner":"y"}`,
	`{"ttl_ms":1,"wait_ms":2,"owner":"o","session_id":"s"}`, `{"ttl_ms":1,}`, `{"ttl_ms":1 "wait_ms":2}`, `{,}`,
	`{"ttl_ms":}`, `{"ttl_ms":1]`, `{"ttl_ms":[1}`, `{"ttl_ms":{"a":[1,{"b":"}"}]},"bogus":1}`, `{"ttl_ms":"a,b}","x":1}`,
	`{"ttl_ms":"a\"b","x":1}`, `{"ttl_ms":1x,"bogus":1}`, `{"ttl_ms":1 2,"bogus":1}`, `{"ttl_ms":tru,"bogus":1}`,
	`{"ttl_ms":true,"bogus":1}`, `{"owner":"x"}{"bogus":1}`, `{"owner":"x"} junk`, `{"ow\u006eer":"x","owner":"y"}`,
	`{"ow\ner":1}`, `{"ow\qer":1}`, "{\"ow\x01ner\":1}", "{\"own\xffer\":1}", `{"ünknown":1}`, "\t{\r\n\"owner\"\n:\t\"x\"\r}",
	`{"owner":"x",  "owner":1}`, `{"owner":"x","bogus":1,"owner":2}`, `{"wait_ms":1e3,"ttl_ms":-0.5}`, `{"":1}`,
	`{"owner":"x\\","bogus":1}`, `{"owner":"\\\"","bogus":1}`, `{"owner":[[[]]],"ttl_ms":{}}`, `{"owner":"x"`, `{"owner":"x",`,
	`{"owner":"x"]`, "\xef\xbb\xbf{\"bogus\":1}", `{"owner":nul}`, `{"owner":null,"ttl_ms":null}`,
}

// checkMembers answers every body as the json.Decoder walk it replaced did.
func TestCheckMembersAsDecoderDid(t *testing.T) {
	for _, body := range memberBodies {
		for _, v := range []any{&acquireBody{}, &renewBody{}, &releaseBody{}} {
			compareMembers(t, []byte(body), v)
		}
	}
}

func FuzzCheckMembers(f *testing.F) {
	for _, body := range memberBodies {
		f.Add([]byte(body))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		compareMembers(t, body, &acquireBody{})
	})
}

func compareMembers(t *testing.T, body []byte, v any) {
	t.Helper()
	got, want := checkMembers(body, v), checkMembersByDecoder(body, v)
	if fmt.Sprint(got) != fmt.Sprint(want) || problemFor(got).Code != problemFor(want).Code {
		t.Errorf("checkMembers(%q, %T) = %v, want %v (as the decoder walk said)", body, v, got, want)
	}
}
