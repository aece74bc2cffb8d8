package proxytest

import (
	"os"
	"path/filepath"
	"testing"
)

// RequireNodeModule returns the path of node, after checking that the npm
// package module is installed in dir/node_modules (npm ci in dir installs
// what dir's package-lock.json pins). When either is missing it skips the
// test, or fails it when RequireEnv is set, as LookPath does.
func RequireNodeModule(t testing.TB, dir, module string) string {
	t.Helper()
	node := LookPath(t, "node")
	if node == "" {
		return ""
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", module, "package.json")); err != nil {
		if required() {
			t.Fatalf("npm package %s is not installed in %s and %s is set: run npm ci there", module, dir, RequireEnv)
		} else {
			t.Skipf("npm package %s is not installed in %s: run npm ci there (set %s=1 to fail instead of skipping)", module, dir, RequireEnv)
		}
		return ""
	}
	return node
}
