// Package local is the on-disk content store: an implementation of
// content.Store that keeps committed blobs under root/blobs/sha256/<hex> and
// ingests in progress under root/ingest/<ref>/data.
//
// Ingests never outlive the process that wrote them: New removes every
// leftover ingest, and a writer closed without a successful Commit removes
// its own. A blob appears under blobs/ only after its size (and, when given,
// its digest) has been checked and its bytes fsynced, by an atomic rename
// followed by an fsync of the directory.
//
// Refs and digests are validated against strict formats before they are used
// to build a path, so no caller can name a file outside root.
package local

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/redact"
)

var _ content.Store = (*Store)(nil)

const (
	dirPerm  = 0o755
	filePerm = 0o644
	maxRef   = 128
)

// Option configures a Store.
type Option func(*Store)

// WithLogger sets the logger (default: no logging).
func WithLogger(l *zap.Logger) Option {
	return func(s *Store) {
		if l != nil {
			s.log = l
		}
	}
}

// WithDirectIO makes ingests bypass the page cache where the filesystem
// allows it (see direct.go): writes of aligned buffers (piece.Buffer) at
// aligned offsets, and every read of an ingest or a committed blob (a blob
// is verified, when it must be, through the page cache).
func WithDirectIO() Option { return func(s *Store) { s.directIO, s.directReads = true, true } }

// WithDirectWrites makes ingests write around the page cache as
// WithDirectIO does, while reads go through it: for a store whose newest
// content is read by many readers at once (the supernode's CDN), which the
// page cache serves from memory after one read from the disk. A reader that
// reads a piece once and keeps it uses ReadAtDirect.
func WithDirectWrites() Option { return func(s *Store) { s.directIO = true } }

// Store is a content.Store on a local filesystem.
type Store struct {
	root        string
	log         *zap.Logger
	directIO    bool // ingests write with O_DIRECT
	directReads bool // and reads of ingests and blobs go around the page cache

	mu     sync.Mutex
	active map[string]*writer // refs held by an open writer

	verify verifier // see verify.go
	vmu    sync.Mutex
	vstats VerifyStats
}

// New opens (creating if needed) a store under root and removes every
// leftover ingest.
func New(root string, opts ...Option) (*Store, error) {
	if root == "" {
		return nil, errors.New("content store: empty root")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("content store root: %w", err)
	}
	s := &Store{root: abs, log: zap.NewNop(), active: make(map[string]*writer)}
	s.verify.init()
	for _, o := range opts {
		o(s)
	}
	if err := os.MkdirAll(s.blobDir(), dirPerm); err != nil {
		return nil, fmt.Errorf("content store: create blobs dir: %w", err)
	}
	// Nothing unverified is reused after a restart: drop every ingest.
	if err := os.RemoveAll(s.ingestRoot()); err != nil {
		return nil, fmt.Errorf("content store: remove leftover ingests: %w", err)
	}
	if err := os.MkdirAll(s.ingestRoot(), dirPerm); err != nil {
		return nil, fmt.Errorf("content store: create ingest dir: %w", err)
	}
	return s, nil
}

// Root returns the store's root directory.
func (s *Store) Root() string { return s.root }

func (s *Store) blobDir() string    { return filepath.Join(s.root, "blobs", "sha256") }
func (s *Store) ingestRoot() string { return filepath.Join(s.root, "ingest") }

// blobPath returns the path of a blob; dgst must have been validated.
func (s *Store) blobPath(dgst digest.Digest) string {
	return filepath.Join(s.blobDir(), dgst.Encoded())
}

// ingestDir returns the directory of an ingest; ref must have been validated.
func (s *Store) ingestDir(ref string) string { return filepath.Join(s.ingestRoot(), ref) }

// validateRef accepts 1 to 128 characters of [A-Za-z0-9._-], except "." and "..".
func validateRef(ref string) error {
	if ref == "" || len(ref) > maxRef || ref == "." || ref == ".." {
		return fmt.Errorf("ref %q: %w", redact.Truncate(ref), content.ErrInvalid)
	}
	for i := 0; i < len(ref); i++ {
		c := ref[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return fmt.Errorf("ref %q: %w", redact.Truncate(ref), content.ErrInvalid)
		}
	}
	return nil
}

// validateDigest accepts well-formed sha256 digests only.
func validateDigest(dgst digest.Digest) error {
	if !strings.HasPrefix(string(dgst), "sha256:") || dgst.Validate() != nil {
		return fmt.Errorf("digest %q: %w", redact.Truncate(string(dgst)), content.ErrInvalid)
	}
	return nil
}

// Info describes a committed blob.
func (s *Store) Info(ctx context.Context, dgst digest.Digest) (content.Info, error) {
	if err := validateDigest(dgst); err != nil {
		return content.Info{}, err
	}
	fi, err := os.Stat(s.blobPath(dgst))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return content.Info{}, fmt.Errorf("content %s: %w", dgst, content.ErrNotFound)
		}
		return content.Info{}, fmt.Errorf("stat content %s: %w", dgst, err)
	}
	return infoOf(dgst, fi), nil
}

func infoOf(dgst digest.Digest, fi fs.FileInfo) content.Info {
	return content.Info{
		Digest:     dgst,
		Size:       fi.Size(),
		CreatedAt:  fi.ModTime(),
		AccessedAt: accessTime(fi),
	}
}

// Walk calls fn for every committed blob, in digest order; an error from fn
// (or ctx) stops it and is returned.
func (s *Store) Walk(ctx context.Context, fn func(content.Info) error) error {
	entries, err := os.ReadDir(s.blobDir())
	if err != nil {
		return fmt.Errorf("walk content: %w", err)
	}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		if !e.Type().IsRegular() {
			continue
		}
		dgst := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
		if validateDigest(dgst) != nil {
			continue // a temp file of Export or a stray file: not a blob
		}
		fi, err := e.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // deleted while walking
			}
			return fmt.Errorf("walk content: %w", err)
		}
		if err := fn(infoOf(dgst, fi)); err != nil {
			return err
		}
	}
	return nil
}

// Delete removes a committed blob. Readers that already opened it keep
// reading it.
func (s *Store) Delete(ctx context.Context, dgst digest.Digest) error {
	if err := validateDigest(dgst); err != nil {
		return err
	}
	s.verify.forget(dgst)
	if err := os.Remove(s.blobPath(dgst)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("content %s: %w", dgst, content.ErrNotFound)
		}
		return fmt.Errorf("delete content %s: %w", dgst, err)
	}
	return nil
}

// ReaderAt opens a committed blob for reading and, best effort, marks it as
// accessed now. A blob this store has not verified since it was opened, or
// whose file changed since, is hashed first (see verify.go); one that does
// not match its digest is removed and reported as content.ErrNotFound
// (wrapping content.ErrCorrupt).
func (s *Store) ReaderAt(ctx context.Context, dgst digest.Digest) (content.ReaderAt, error) {
	if err := validateDigest(dgst); err != nil {
		return nil, err
	}
	p := s.blobPath(dgst)
	f, err := s.openBlob(dgst)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("stat content %s: %w", dgst, err)
	}
	if err := s.ensureVerified(ctx, dgst, f, fi); err != nil {
		_ = f.Close()
		return nil, err
	}
	if err := os.Chtimes(p, time.Now(), fi.ModTime()); err != nil {
		s.log.Debug("touch content", zap.Stringer("digest", dgst), zap.Error(err))
	}
	if s.directReads {
		if df, err := openDirect(p, os.O_RDONLY); err == nil {
			_ = f.Close()
			return &directReader{file: df, size: fi.Size()}, nil
		}
	}
	return &fileReader{File: f, size: fi.Size()}, nil
}

// directReader reads a committed blob around the page cache (WithDirectIO).
// It is no *os.File on purpose: nothing sends it with sendfile(2), which
// would fill the page cache.
type directReader struct {
	file *os.File // opened with O_DIRECT
	size int64
}

func (r *directReader) ReadAt(p []byte, off int64) (int, error) {
	return directReadAt(r.file, p, off)
}

func (r *directReader) Size() int64  { return r.size }
func (r *directReader) Close() error { return r.file.Close() }

// fileReader is a committed blob open for reading.
type fileReader struct {
	*os.File
	size int64

	directOnce sync.Once
	direct     *os.File // the same file opened with O_DIRECT, nil when unavailable
}

func (r *fileReader) Size() int64 { return r.size }

// ReadAtDirect reads like ReadAt, around the page cache where the
// filesystem allows it: for a caller that reads a piece once and keeps its
// bytes itself (the CDN hashing a piece and sending those same bytes), so
// that a blob written around the page cache is not read into it. It reads
// the file ReadAt reads, never one renamed over its path since; where direct
// I/O is unavailable it is ReadAt.
func (r *fileReader) ReadAtDirect(p []byte, off int64) (int, error) {
	r.directOnce.Do(func() {
		df, err := openDirect(r.Name(), os.O_RDONLY)
		if err != nil {
			return
		}
		a, aerr := r.Stat()
		b, berr := df.Stat()
		if aerr != nil || berr != nil || !os.SameFile(a, b) {
			_ = df.Close()
			return
		}
		r.direct = df
	})
	if r.direct == nil {
		return r.ReadAt(p, off)
	}
	return directReadAt(r.direct, p, off)
}

// Close closes the file and its direct descriptor.
func (r *fileReader) Close() error {
	r.directOnce.Do(func() {}) // no direct descriptor opens after Close
	if r.direct != nil {
		_ = r.direct.Close()
	}
	return r.File.Close()
}

// Usage returns the total size in bytes of the committed blobs.
func (s *Store) Usage(ctx context.Context) (int64, error) {
	var total int64
	err := s.Walk(ctx, func(i content.Info) error {
		total += i.Size
		return nil
	})
	return total, err
}

// Writer starts a fresh ingest under ref. A leftover ingest of that ref that
// no writer holds is discarded.
func (s *Store) Writer(ctx context.Context, ref string) (content.Writer, error) {
	if err := validateRef(ref); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	w := &writer{store: s, ref: ref, startedAt: time.Now()}
	w.updatedAt = w.startedAt
	s.mu.Lock()
	if _, held := s.active[ref]; held {
		s.mu.Unlock()
		return nil, fmt.Errorf("ingest %s: %w", ref, content.ErrUnavailable)
	}
	s.active[ref] = w
	s.mu.Unlock()

	f, err := s.createIngest(ref)
	if err != nil {
		s.release(ref)
		return nil, err
	}
	w.file = f
	w.hasher = digest.SHA256.Digester()
	if s.directIO {
		if df, err := openDirect(f.Name(), os.O_RDWR); err == nil {
			w.direct.Store(df)
		} else {
			s.log.Debug("direct I/O unavailable, ingest uses the page cache", zap.String("ref", ref), zap.Error(err))
		}
	}
	return w, nil
}

func (s *Store) createIngest(ref string) (*os.File, error) {
	dir := s.ingestDir(ref)
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("ingest %s: remove leftover: %w", ref, err)
	}
	if err := os.MkdirAll(dir, dirPerm); err != nil {
		return nil, fmt.Errorf("ingest %s: %w", ref, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "data"), os.O_RDWR|os.O_CREATE|os.O_EXCL, filePerm)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("ingest %s: %w", ref, err)
	}
	return f, nil
}

func (s *Store) release(ref string) {
	s.mu.Lock()
	delete(s.active, ref)
	s.mu.Unlock()
}

// Status describes the ingest held under ref.
func (s *Store) Status(ctx context.Context, ref string) (content.Status, error) {
	if err := validateRef(ref); err != nil {
		return content.Status{}, err
	}
	s.mu.Lock()
	w, ok := s.active[ref]
	s.mu.Unlock()
	if !ok {
		return content.Status{}, fmt.Errorf("ingest %s: %w", ref, content.ErrNotFound)
	}
	return w.Status()
}

// ListStatuses describes every ingest in progress, sorted by ref.
func (s *Store) ListStatuses(ctx context.Context) ([]content.Status, error) {
	s.mu.Lock()
	ws := make([]*writer, 0, len(s.active))
	for _, w := range s.active {
		ws = append(ws, w)
	}
	s.mu.Unlock()
	out := make([]content.Status, 0, len(ws))
	for _, w := range ws {
		st, err := w.Status()
		if err != nil {
			continue // closed meanwhile
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b content.Status) int { return strings.Compare(a.Ref, b.Ref) })
	return out, nil
}

// Abort removes an ingest that no writer holds. An ingest held by an open
// writer is not touched (ErrUnavailable): its writer aborts it by Close.
func (s *Store) Abort(ctx context.Context, ref string) error {
	if err := validateRef(ref); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, held := s.active[ref]; held {
		return fmt.Errorf("abort ingest %s: %w", ref, content.ErrUnavailable)
	}
	dir := s.ingestDir(ref)
	if _, err := os.Lstat(dir); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("ingest %s: %w", ref, content.ErrNotFound)
		}
		return fmt.Errorf("abort ingest %s: %w", ref, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("abort ingest %s: %w", ref, err)
	}
	return nil
}

// syncDir fsyncs a directory so that renames and removals in it are durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
