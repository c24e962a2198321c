// Package content is the contract of Damselfly's content-addressed store:
// types, interfaces and errors, no implementation. pkg/content/local keeps
// content on disk; pkg/content/contenttest holds an in-memory fake and the
// conformance suite every implementation passes.
//
// Lifecycle of one blob:
//
//  1. Ingester.Writer opens an ingest under a ref (one writer per ref at a
//     time; a second gets ErrUnavailable). A leftover ingest of the same ref
//     is discarded: nothing unverified survives a restart.
//  2. Bytes arrive in order (Write) or piece by piece in any order (WriteAt).
//     The writer hashes the contiguous written prefix as it grows. ReadAt
//     reads back written bytes, so pieces the caller has verified can be
//     served to others while the ingest is in progress.
//  3. Writer.Commit(size, expected) flushes to stable storage, checks the
//     size and, when expected is set, the digest; only then is the blob
//     published under its digest. A mismatch removes the ingest and returns
//     ErrDigestMismatch or ErrSizeMismatch; nothing is published.
//  4. Provider.ReaderAt reads committed blobs only: readers never see
//     unverified bytes. A store may check a committed blob again before it
//     hands it out (pkg/content/local does after a restart, and when the
//     file changed); one that fails is removed: ErrNotFound and ErrCorrupt.
package content

import (
	"context"
	"errors"
	"io"
	"time"

	digest "github.com/opencontainers/go-digest"
)

var (
	// ErrNotFound: no blob with that digest, or no ingest with that ref.
	ErrNotFound = errors.New("content not found")
	// ErrAlreadyExists: Commit found the blob already published. The bytes
	// are identical (same digest), so callers may treat it as success.
	ErrAlreadyExists = errors.New("content already exists")
	// ErrUnavailable: another writer holds the ref.
	ErrUnavailable = errors.New("content ref in use")
	// ErrDigestMismatch: the committed bytes do not hash to the expected digest.
	ErrDigestMismatch = errors.New("content digest mismatch")
	// ErrSizeMismatch: the committed size is not the written size.
	ErrSizeMismatch = errors.New("content size mismatch")
	// ErrInvalid: a malformed ref or digest.
	ErrInvalid = errors.New("invalid content ref or digest")
	// ErrCorrupt: a committed blob no longer matched its digest when it
	// was checked, and was removed. It comes wrapped with ErrNotFound, so
	// callers that fetch what is not found fetch it again.
	ErrCorrupt = errors.New("committed content failed verification and was removed")
)

// Info describes a committed blob.
type Info struct {
	Digest    digest.Digest
	Size      int64
	CreatedAt time.Time
	// AccessedAt is updated when the blob is opened for reading (best effort).
	AccessedAt time.Time
}

// Status describes an ingest in progress.
type Status struct {
	Ref string
	// Offset is the length of the contiguous prefix written (and hashed).
	Offset int64
	// Written is the total number of bytes written, in any order.
	Written   int64
	StartedAt time.Time
	UpdatedAt time.Time
}

// ReaderAt reads one committed blob.
type ReaderAt interface {
	io.ReaderAt
	io.Closer
	Size() int64
}

// Provider opens committed blobs for reading.
type Provider interface {
	ReaderAt(ctx context.Context, dgst digest.Digest) (ReaderAt, error)
}

// InfoProvider describes committed blobs.
type InfoProvider interface {
	Info(ctx context.Context, dgst digest.Digest) (Info, error)
}

// Manager lists and removes committed blobs.
type Manager interface {
	InfoProvider
	// Walk calls fn for every committed blob; an error from fn stops it.
	Walk(ctx context.Context, fn func(Info) error) error
	Delete(ctx context.Context, dgst digest.Digest) error
}

// Writer is one ingest in progress. It is safe for concurrent WriteAt and
// ReadAt calls on disjoint ranges. Bytes written twice at one offset must be
// the same bytes (content is addressed by digest).
type Writer interface {
	io.Writer
	io.WriterAt
	io.ReaderAt
	// Close releases the ref. Closing an uncommitted writer aborts the
	// ingest and removes its bytes.
	io.Closer
	// Digest returns the digest of the content once Commit has succeeded
	// (or failed with ErrAlreadyExists), and "" before.
	Digest() digest.Digest
	// Sync makes the bytes written so far durable. It may run alongside
	// WriteAt and ReadAt: calling it before Commit, outside any lock that
	// readers need, leaves Commit's own flush little to do.
	Sync() error
	// Commit publishes the ingest as a blob of size bytes. expected may be
	// empty, in which case the computed digest names the blob.
	Commit(ctx context.Context, size int64, expected digest.Digest) error
	Status() (Status, error)
}

// VouchedWriter is a Writer that can leave the content digest to its
// caller: a peer verifies every piece it writes against a piece digest the
// supernode handed it, and the supernode, having verified the whole content,
// vouches that those piece digests make up the content of one digest. The
// content is then hashed once on the node (each piece), not twice.
type VouchedWriter interface {
	Writer
	// SkipHash stops the writer from hashing the bytes as they arrive. It
	// must be called before the first write. A plain Commit then reads the
	// whole ingest back and hashes it, so Commit still checks what it
	// publishes.
	SkipHash()
	// CommitVouched publishes the ingest as a blob of size bytes named dgst
	// without hashing it. The caller vouches that every byte was verified
	// and that together they hash to dgst; everything else (size, a
	// complete ingest, fsync, atomic publish) is checked as by Commit.
	CommitVouched(ctx context.Context, size int64, dgst digest.Digest) error
}

// Ingester opens writers.
type Ingester interface {
	// Writer starts a fresh ingest under ref (1 to 128 characters of
	// [A-Za-z0-9._-]).
	Writer(ctx context.Context, ref string) (Writer, error)
}

// IngestManager inspects and aborts ingests.
type IngestManager interface {
	Status(ctx context.Context, ref string) (Status, error)
	ListStatuses(ctx context.Context) ([]Status, error)
	// Abort removes an ingest that no writer holds.
	Abort(ctx context.Context, ref string) error
}

// Store is the whole content store.
type Store interface {
	Manager
	Provider
	Ingester
	IngestManager
}
