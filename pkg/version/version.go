// Package version holds build information set with -ldflags -X.
package version

import (
	"fmt"
	"runtime"
)

// Set at build time:
//
//	-X github.com/damselfly/damselfly/pkg/version.version=v0.1.0
//	-X github.com/damselfly/damselfly/pkg/version.revision=<git sha>
var (
	version  = "dev"
	revision = "unknown"
)

// Version returns the release version.
func Version() string { return version }

// String returns one line for --version output.
func String(binary string) string {
	return fmt.Sprintf("%s %s (revision %s, %s, %s/%s)", binary, version, revision, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
