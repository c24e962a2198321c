//go:build !unix

package cdn

import "errors"

// statfs is not known on this system: only cdn.maxSourceSize and cdn.quota
// bound the store.
func statfs(string) (diskSpace, error) {
	return diskSpace{}, errors.New("free space unknown on this system")
}
