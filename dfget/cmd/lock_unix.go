//go:build unix

package cmd

import (
	"errors"
	"os"
	"syscall"
)

// tryLock takes an exclusive lock on f without waiting. It reports false
// when another process holds one.
func tryLock(f *os.File) (bool, error) {
	var err error
	for range 100 { // retried only when a signal interrupts it
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, syscall.EINTR):
			continue
		case errors.Is(err, syscall.EWOULDBLOCK):
			return false, nil
		}
		return false, err
	}
	return false, err
}
