package cmd

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"
)

const (
	// lockName is the lock file inside a hidden data directory: its dfget
	// holds an exclusive lock on it for as long as it runs, and the kernel
	// drops the lock when the process dies, however it dies.
	lockName = "lock"
	// unlockedGrace is how old a hidden data directory without a lock file
	// must be before another dfget removes it: its owner may be between
	// creating the directory and locking it.
	unlockedGrace = 10 * time.Minute
)

// dataDirPrefix is the name prefix of the hidden data directories of
// downloads to out.
func dataDirPrefix(out string) string { return "." + filepath.Base(out) + ".dfget-" }

// newDataDir creates a hidden data directory beside out (one filesystem, so
// the final move is a rename) and locks it for the life of this process.
// release removes it. Hidden data directories in out's directory whose
// dfget is gone (killed, crashed; whatever file it was downloading) are
// removed first: their content was never verified and is not reused.
func newDataDir(out string, logger *zap.Logger) (dir string, release func(), err error) {
	removeStaleDataDirs(out, logger)
	dir, err = os.MkdirTemp(filepath.Dir(out), dataDirPrefix(out))
	if err != nil {
		return "", nil, err
	}
	lock, err := lockDataDir(dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		return "", nil, err
	}
	return dir, func() {
		_ = os.RemoveAll(dir)
		if lock != nil {
			_ = lock.Close()
		}
	}, nil
}

// lockDataDir creates dir's lock file already locked: it is locked under a
// temporary name and then renamed, so a lock file that another dfget sees
// is always held by its owner while the owner lives. It returns nil (no
// lock) where the platform offers none.
func lockDataDir(dir string) (*os.File, error) {
	f, err := os.CreateTemp(dir, "."+lockName+"-*")
	if err != nil {
		return nil, fmt.Errorf("lock data dir: %w", err)
	}
	ok, err := tryLock(f)
	if errors.Is(err, errors.ErrUnsupported) {
		_ = f.Close()
		_ = os.Remove(f.Name())
		return nil, nil
	}
	if err != nil || !ok {
		_ = f.Close()
		_ = os.Remove(f.Name())
		if err == nil {
			err = errors.New("lock held by another process")
		}
		return nil, fmt.Errorf("lock data dir: %w", err)
	}
	if err := os.Rename(f.Name(), filepath.Join(dir, lockName)); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("lock data dir: %w", err)
	}
	return f, nil
}

// removeStaleDataDirs removes the hidden data directories of dfgets in
// out's directory that no running dfget holds, whichever file they were
// for. Failures are logged and otherwise ignored: they cost disk space, not
// correctness.
func removeStaleDataDirs(out string, logger *zap.Logger) {
	parent := filepath.Dir(out)
	entries, err := os.ReadDir(parent)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() || !isDataDirName(e.Name()) {
			continue
		}
		dir := filepath.Join(parent, e.Name())
		if !stale(dir) {
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			logger.Warn("remove data dir of a dead dfget", zap.String("dir", dir), zap.Error(err))
			continue
		}
		logger.Info("removed data dir of a dead dfget", zap.String("dir", dir))
	}
}

// isDataDirName reports whether name is that of a hidden data directory
// (dataDirPrefix of some output, then os.MkdirTemp's suffix).
func isDataDirName(name string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name[1:], ".dfget-")
}

// stale reports whether no living dfget holds dir.
func stale(dir string) bool {
	f, err := os.Open(filepath.Join(dir, lockName))
	if errors.Is(err, fs.ErrNotExist) {
		fi, serr := os.Stat(dir)
		return serr == nil && time.Since(fi.ModTime()) > unlockedGrace
	}
	if err != nil {
		return false
	}
	// Closing f releases the lock taken here; the caller removes dir
	// right after, and a dfget that starts meanwhile uses a new directory.
	defer f.Close()
	ok, err := tryLock(f)
	return err == nil && ok
}
