package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/content"
)

// copyBuf is the buffer size Export copies with.
const copyBuf = 1 << 20

// Export writes the blob dgst to the file dst atomically: dst either keeps
// its old state or holds the whole blob, never a part of it. With move, the
// blob leaves the store: it is renamed to dst when both are on one
// filesystem, and otherwise copied and then deleted.
func (s *Store) Export(ctx context.Context, dgst digest.Digest, dst string, move bool) error {
	if err := validateDigest(dgst); err != nil {
		return err
	}
	if dst == "" {
		return fmt.Errorf("export %s: empty destination", dgst)
	}
	src := s.blobPath(dgst)
	if _, err := os.Stat(src); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("export %s: %w", dgst, content.ErrNotFound)
		}
		return fmt.Errorf("export %s: %w", dgst, err)
	}
	if fi, err := os.Stat(dst); err == nil && fi.IsDir() {
		return fmt.Errorf("export %s: destination %s is a directory", dgst, dst)
	}
	dir := filepath.Dir(dst)
	if move {
		err := os.Rename(src, dst)
		if err == nil {
			s.syncDirs(dir, s.blobDir())
			return nil
		}
		if !errors.Is(err, syscall.EXDEV) {
			return fmt.Errorf("export %s: move: %w", dgst, err)
		}
		// Another filesystem: copy, then delete.
	}
	if err := s.copyOut(ctx, src, dst); err != nil {
		return fmt.Errorf("export %s: %w", dgst, err)
	}
	if move {
		if err := os.Remove(src); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("export %s: remove from store: %w", dgst, err)
		}
		s.syncDirs(s.blobDir())
	}
	return nil
}

// copyOut copies src into a temporary file next to dst, fsyncs it and
// renames it over dst.
func (s *Store) copyOut(ctx context.Context, src, dst string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	dir := filepath.Dir(dst)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	buf := make([]byte, copyBuf)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, rerr := in.Read(buf)
		if n > 0 {
			if _, err := tmp.Write(buf[:n]); err != nil {
				return err
			}
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	if err := tmp.Chmod(filePerm); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return err
	}
	s.syncDirs(dir)
	return nil
}

// syncDirs fsyncs directories best effort: the data itself is already on
// stable storage, only the directory entries are in question.
func (s *Store) syncDirs(dirs ...string) {
	for _, d := range dirs {
		if err := syncDir(d); err != nil {
			s.log.Debug("sync dir", zap.Error(err))
		}
	}
}
