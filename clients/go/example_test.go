package modelroute_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestExampleProgram runs example/ against a real server: the README's transcript must
// stay true (the simulated quota error moves the call and later callers to the fallback).
func TestExampleProgram(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	// `go run` inherits GOPATH / GO111MODULE from the test's environment (see test.sh).
	out, err := exec.Command("go", "run", "./example", "-addr", s.Addr, "-simulate-quota").CombinedOutput()
	if err != nil {
		t.Fatalf("example: %v\n%s", err, out)
	}
	for _, want := range []string{
		"resolve rag.answer: gemini-3-flash-preview",
		"call served by gpt-4o-mini",
		`resolve again: gpt-4o-mini (fallback from "gemini-3-flash-preview", cause FALLBACK_CAUSE_COOLDOWN)`,
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("example output lacks %q:\n%s", want, out)
		}
	}
}
