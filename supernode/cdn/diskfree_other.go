//go:build !unix

package cdn

import "errors"

// freeSpace is not known on this system: only cdn.maxSourceSize bounds a
// fetch.
func freeSpace(string) (int64, error) {
	return 0, errors.New("free space unknown on this system")
}
