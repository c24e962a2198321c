package piece

import (
	"crypto/sha256"
	"unsafe"

	digest "github.com/opencontainers/go-digest"
)

// BufferAlign is the memory alignment of Buffer: what direct I/O (O_DIRECT)
// needs of the buffers it reads into and writes from.
const BufferAlign = 4096

// Buffer returns a buffer of n bytes whose first byte is aligned to
// BufferAlign, so that a content store writing around the page cache can
// write it as it is.
func Buffer(n int) []byte {
	b := make([]byte, n+BufferAlign)
	skip := 0
	if r := int(uintptr(unsafe.Pointer(unsafe.SliceData(b))) % BufferAlign); r != 0 {
		skip = BufferAlign - r
	}
	return b[skip : skip+n : skip+n]
}

// Aligned reports whether p starts at a BufferAlign boundary.
func Aligned(p []byte) bool {
	return len(p) > 0 && uintptr(unsafe.Pointer(unsafe.SliceData(p)))%BufferAlign == 0
}

// ListDigest is the sha256 of a task's piece digests in piece order, one
// per line. The supernode gives it once it has verified the whole content:
// a peer whose pieces were each verified against digests with the same
// ListDigest holds exactly that content, without hashing it again.
func ListDigest(pieces []digest.Digest) digest.Digest {
	h := sha256.New()
	for _, d := range pieces {
		_, _ = h.Write([]byte(d))
		_, _ = h.Write([]byte{'\n'})
	}
	return digest.NewDigest(digest.SHA256, h)
}
