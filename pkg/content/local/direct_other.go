//go:build !linux

package local

import (
	"errors"
	"os"
)

func openDirect(string, int) (*os.File, error) {
	return nil, errors.New("direct I/O is only used on Linux")
}
