//go:build !unix

package cmd

import (
	"errors"
	"os"
)

// tryLock is not available here: data directories are never taken for
// stale, and nobody else's is removed.
func tryLock(*os.File) (bool, error) { return false, errors.ErrUnsupported }
