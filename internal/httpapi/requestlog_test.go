package httpapi_test

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/lockd/lockd/internal/httpapi"
)

// The request line is written at debug level, with its route pattern, and
// not at all above it (where nothing is built for it).
func TestRequestLogAtDebugOnly(t *testing.T) {
	for _, tc := range []struct {
		level slog.Level
		want  bool
	}{{slog.LevelDebug, true}, {slog.LevelInfo, false}} {
		var out syncBuffer
		s := newSpecServer(t, httpapi.Options{Logger: slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: tc.level}))})
		s.want(s.do("POST", "/v1/locks/log.a/acquire", `{"ttl_ms": 5000}`), 200, "")
		line := `msg=request method=POST route=/v1/locks/{key}/acquire key=log.a status=200`
		if got := strings.Contains(out.String(), line); got != tc.want {
			t.Errorf("log at %v has the request line %v, want %v; log:\n%s", tc.level, got, tc.want, out.String())
		}
	}
}
