// Package piece holds the piece math shared by every part of Damselfly: the
// size policy, index to byte-range conversion, per-piece digests and a set of
// piece indices. It is pure code with no I/O.
package piece

import (
	"fmt"

	digest "github.com/opencontainers/go-digest"
)

const (
	// DefaultSize is the piece size of every task up to MaxCount pieces.
	DefaultSize int64 = 4 << 20
	// MaxCount is the number of pieces above which the piece size doubles.
	MaxCount = 1000
)

// SizeFor returns the piece size for content of total bytes: DefaultSize,
// doubled until the content fits in at most MaxCount pieces. An unknown size
// (total < 0) gets DefaultSize.
func SizeFor(total int64) int64 {
	size := DefaultSize
	for total > 0 && (total+size-1)/size > MaxCount {
		size *= 2
	}
	return size
}

// Count returns the number of pieces of size bytes that hold total bytes.
// Empty content has zero pieces; an unknown total (< 0) returns -1.
func Count(total, size int64) int {
	if total < 0 {
		return -1
	}
	return int((total + size - 1) / size)
}

// Bounds returns the offset and length of piece i of content of total bytes
// cut in pieces of size bytes. When total is unknown (< 0) the piece is
// assumed to be full.
func Bounds(i int, total, size int64) (off, n int64) {
	off = int64(i) * size
	n = size
	if total >= 0 && off+n > total {
		n = max(total-off, 0)
	}
	return off, n
}

// Index returns the index of the piece that holds byte offset off.
func Index(off, size int64) int {
	return int(off / size)
}

// Digest returns the sha256 digest of one piece's bytes.
func Digest(p []byte) digest.Digest {
	return digest.SHA256.FromBytes(p)
}

// ValidateDigest checks that d is a well-formed sha256 digest, the only
// algorithm a piece may be verified with.
func ValidateDigest(d digest.Digest) error {
	// Validate first: Algorithm panics on a string without ':'.
	if err := d.Validate(); err != nil {
		return err
	}
	if d.Algorithm() != digest.SHA256 {
		return fmt.Errorf("piece digest %q: only sha256 is accepted", d)
	}
	return nil
}
