package client_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// readmeCode is the first fenced block of lang in the README's section
// heading that contains marker.
func readmeCode(t *testing.T, heading, lang, marker string) string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "\n"+heading+"\n")
	if !ok {
		t.Fatalf("README has no %q", heading)
	}
	section, _, _ := strings.Cut(rest, "\n## ")
	for {
		var block string
		_, section, ok = strings.Cut(section, "```"+lang+"\n")
		if !ok {
			t.Fatalf("README's %q has no %s block with %q", heading, lang, marker)
		}
		block, section, _ = strings.Cut(section, "```\n")
		if strings.Contains(block, marker) {
			return block
		}
	}
}

// The README's Go election snippet, as written, is the body of a real
// program run against a real lockd.
func TestReadmeElectionGo(t *testing.T) {
	srv := sharedServer(t)
	snippet := readmeCode(t, "## Leader election", "go", "c.Campaign(")
	prog := `package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/lockd/lockd/client"
)

func main() {
` + snippet + `}
`
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(prog), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "run", filepath.Join(dir, "main.go"))
	cmd.Env = append(os.Environ(), "LOCKD_ADDR="+srv.Addr)
	out, err := cmd.CombinedOutput()
	t.Logf("README's Go snippet:\n%s", out)
	if err != nil {
		t.Fatalf("go run: %v\n%s", err, prog)
	}
	m := regexp.MustCompile(`leading, term (\d+) held\n`).FindStringSubmatch(string(out))
	if m == nil {
		t.Fatal("output lacks `leading, term N held`")
	}
	for _, want := range []string{
		"leader " + m[1] + " http://node-c:9090\n",
		"no_leader " + m[1] + " resigned lost\n",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q", want)
		}
	}
}
