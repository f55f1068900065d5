package main

import (
	"os"
	"strings"
	"testing"
)

// Every curl line in the README that sends a body says it is JSON, as
// api/openapi.yaml requires: curl's -d alone sends a form content type that
// a validating proxy in front of lockd refuses.
func TestReadmeCurlSendsJSON(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(readme), "\n")
	n := 0
	for i, l := range lines {
		if !strings.Contains(l, " -d ") && !strings.HasPrefix(strings.TrimSpace(l), "-d ") {
			continue
		}
		// A command continued with \ starts on an earlier line.
		cmd := l
		for j := i - 1; j >= 0 && strings.HasSuffix(strings.TrimSpace(lines[j]), `\`); j-- {
			cmd = lines[j] + cmd
		}
		if !strings.Contains(cmd, "curl ") {
			continue
		}
		n++
		if !strings.Contains(cmd, "Content-Type: application/json") {
			t.Errorf("README.md:%d sends a body without Content-Type: application/json:\n%s", i+1, l)
		}
	}
	if n == 0 {
		t.Fatal("README.md has no curl line with a body: the test reads the wrong file")
	}
}
