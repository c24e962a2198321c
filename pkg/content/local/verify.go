package local

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/content"
)

// Committed blobs are checked, not trusted. The store remembers, for each
// blob it has verified in this process (written and checked by Commit, or
// hashed since), the file it verified: inode, size and modification time.
// ReaderAt hands out a blob only while its file is still that one; a blob
// never verified by this process (a restart), or changed on disk since (a
// write, a truncation, a replaced file), is hashed again first. A blob that
// no longer matches its digest is removed and reported as not found, so the
// caller fetches it again. Verify re-hashes a blob whatever its stamp, for a
// scrub that catches what does not change the file's metadata (media
// errors, writes that restore the modification time).

// Stamp identifies the state of a blob's file: which file (device and
// inode, on Linux), its size and its modification time. A write, a
// truncation or a replaced file changes it; a write that restores the
// modification time does not, which a scrub is for. The supernode's CDN
// keys its own per-piece checks by it too.
type Stamp struct {
	dev, ino uint64
	size     int64
	mtime    time.Time
}

// StampOf returns the stamp of the file fi describes.
func StampOf(fi fs.FileInfo) Stamp {
	dev, ino := fileID(fi)
	return Stamp{dev: dev, ino: ino, size: fi.Size(), mtime: fi.ModTime()}
}

// verifier holds the stamps and runs one hash of a blob at a time.
type verifier struct {
	mu      sync.Mutex
	stamps  map[digest.Digest]Stamp
	running map[digest.Digest]*verifyCall
}

type verifyCall struct {
	done chan struct{}
	err  error
}

func (v *verifier) init() {
	v.stamps = make(map[digest.Digest]Stamp)
	v.running = make(map[digest.Digest]*verifyCall)
}

func (v *verifier) verified(d digest.Digest, st Stamp) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	got, ok := v.stamps[d]
	return ok && got == st
}

func (v *verifier) set(d digest.Digest, st Stamp) {
	v.mu.Lock()
	v.stamps[d] = st
	v.mu.Unlock()
}

func (v *verifier) forget(d digest.Digest) {
	v.mu.Lock()
	delete(v.stamps, d)
	v.mu.Unlock()
}

// VerifyStats counts the store's verifications since it was opened.
type VerifyStats struct {
	// Verified is the number of blob hashes that matched; Failed the
	// number that did not (each removed the blob).
	Verified, Failed int64
	// Bytes is the number of bytes hashed.
	Bytes int64
}

// Stats returns the verification counts so far.
func (s *Store) Stats() VerifyStats {
	s.vmu.Lock()
	defer s.vmu.Unlock()
	return s.vstats
}

// Verify hashes the committed blob dgst again, whatever the store knew of
// it, and removes it when it does not match (content.ErrNotFound and
// content.ErrCorrupt). pace, when set, is called with each chunk's size before it is
// read, to bound a background scrub's disk and CPU use.
func (s *Store) Verify(ctx context.Context, dgst digest.Digest, pace func(ctx context.Context, n int) error) error {
	if err := validateDigest(dgst); err != nil {
		return err
	}
	f, err := s.openBlob(dgst)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat content %s: %w", dgst, err)
	}
	return s.check(ctx, dgst, f, StampOf(fi), pace)
}

// openBlob opens the file of a committed blob.
func (s *Store) openBlob(dgst digest.Digest) (*os.File, error) {
	f, err := os.Open(s.blobPath(dgst))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("content %s: %w", dgst, content.ErrNotFound)
		}
		return nil, fmt.Errorf("open content %s: %w", dgst, err)
	}
	return f, nil
}

// ensureVerified returns nil when f, opened as blob dgst with info fi, is a
// file this store has verified, hashing it first when it is not.
func (s *Store) ensureVerified(ctx context.Context, dgst digest.Digest, f *os.File, fi fs.FileInfo) error {
	st := StampOf(fi)
	if s.verify.verified(dgst, st) {
		return nil
	}
	return s.check(ctx, dgst, f, st, nil)
}

// check hashes f (blob dgst, in state st) once however many callers ask at
// the same time, records the stamp when it matches, and removes the blob
// when it does not.
func (s *Store) check(ctx context.Context, dgst digest.Digest, f *os.File, st Stamp, pace func(context.Context, int) error) error {
	v := &s.verify
	v.mu.Lock()
	if c, ok := v.running[dgst]; ok {
		v.mu.Unlock()
		select {
		case <-c.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if c.err != nil {
			return c.err
		}
		if v.verified(dgst, st) {
			return nil
		}
		return s.check(ctx, dgst, f, st, pace) // another file meanwhile
	}
	c := &verifyCall{done: make(chan struct{})}
	v.running[dgst] = c
	v.mu.Unlock()

	c.err = s.hashFile(ctx, dgst, f, st, pace)
	v.mu.Lock()
	delete(v.running, dgst)
	v.mu.Unlock()
	close(c.done)
	return c.err
}

// hashFile reads f through sha256 and settles the result.
func (s *Store) hashFile(ctx context.Context, dgst digest.Digest, f *os.File, st Stamp, pace func(context.Context, int) error) error {
	h := digest.SHA256.Digester()
	buf := make([]byte, 1<<20)
	var off int64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if pace != nil {
			if err := pace(ctx, len(buf)); err != nil {
				return err
			}
		}
		n, err := f.ReadAt(buf, off)
		h.Hash().Write(buf[:n])
		off += int64(n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			// An I/O error is no verdict on the bytes: report it, keep the blob.
			return fmt.Errorf("verify content %s: %w", dgst, err)
		}
	}
	s.vmu.Lock()
	s.vstats.Bytes += off
	s.vmu.Unlock()
	if got := h.Digest(); got == dgst && off == st.size {
		s.verify.set(dgst, st)
		s.vmu.Lock()
		s.vstats.Verified++
		s.vmu.Unlock()
		return nil
	}
	s.verify.forget(dgst)
	s.vmu.Lock()
	s.vstats.Failed++
	s.vmu.Unlock()
	// Remove the file that failed, not one that replaced it meanwhile.
	if cur, err := os.Lstat(s.blobPath(dgst)); err == nil && StampOf(cur).ino == st.ino {
		if err := os.Remove(s.blobPath(dgst)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			s.log.Error("remove corrupt content", zap.Stringer("digest", dgst), zap.Error(err))
		}
	}
	s.log.Warn("committed content does not match its digest: removed, it will be fetched again",
		zap.Stringer("digest", dgst), zap.Int64("size", off))
	return fmt.Errorf("content %s: %w: %w", dgst, content.ErrNotFound, content.ErrCorrupt)
}
