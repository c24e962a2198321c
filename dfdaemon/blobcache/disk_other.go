//go:build !unix

package blobcache

import "errors"

func statfs(string) (diskSpace, error) {
	return diskSpace{}, errors.New("free space is measured on unix only")
}
