package local

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/damselfly/damselfly/pkg/piece"
)

// Direct I/O: a store opened WithDirectIO writes ingests around the page
// cache. On virtual machines, and wherever memory the guest has not touched
// lately is expensive to fault in, copying a large download into new
// page-cache pages costs more CPU than receiving and hashing it: about
// 2–3.5 CPU-seconds per GiB against 0.15 written with O_DIRECT. An ingest's
// aligned ranges go straight from the caller's buffer to the disk, the
// rest of a write (an unaligned one, the tail of the last piece) through
// the page cache; reads of ingests and of committed blobs bypass it too,
// through pooled aligned buffers (aligned memory at an aligned offset is
// read into directly). A store opened WithDirectWrites writes the same way
// but reads through the page cache, except ReadAtDirect of a committed
// blob. A cold read around the page cache costs the disk's time
// instead of the CPU's: here 0.2 CPU-seconds per GiB against 1.8 to fill new
// page-cache pages. The price is that nothing stays cached for a second read
// of the same blob on the node; a peer keeps its newest pieces in memory
// instead (pkg/peer).

// dioAlign is the alignment O_DIRECT needs of offsets, lengths and memory
// on the filesystems a store lives on (the logical block size is at most
// the page size).
const dioAlign = 4096

// dioReadBuf is the size of the aligned buffers direct reads go through.
const dioReadBuf = 1 << 20

var dioBufs = sync.Pool{New: func() any {
	b := piece.Buffer(dioReadBuf)
	return &b
}}

// directWrite writes what of p at off it can with direct I/O: the aligned
// middle when p's memory and off are aligned. It returns how many bytes of p
// (from its start) it wrote; the caller writes the rest buffered. An error
// means direct I/O does not work for this file: the caller stops using it.
func directWrite(f *os.File, p []byte, off int64) (int, error) {
	if f == nil || off%dioAlign != 0 || !piece.Aligned(p) {
		return 0, nil
	}
	n := len(p) &^ (dioAlign - 1)
	if n == 0 {
		return 0, nil
	}
	m, err := f.WriteAt(p[:n], off)
	if err != nil {
		return m, fmt.Errorf("direct write: %w", err)
	}
	return m, nil
}

// directReadAt reads p at off through aligned buffers, bypassing the page
// cache. It behaves like io.ReaderAt.
func directReadAt(f *os.File, p []byte, off int64) (int, error) {
	done := 0
	if off%dioAlign == 0 && piece.Aligned(p) {
		// Aligned memory at an aligned offset: the aligned part straight
		// into p, with no copy out of a bounce buffer.
		if n := len(p) &^ (dioAlign - 1); n > 0 {
			m, err := f.ReadAt(p[:n], off)
			done = m
			if m < n {
				if err == nil {
					err = io.EOF
				}
				return done, err // io.EOF: the file ends before p does
			}
			if done == len(p) {
				return done, nil
			}
		}
	}
	bp := dioBufs.Get().(*[]byte)
	defer dioBufs.Put(bp)
	buf := *bp
	for done < len(p) {
		pos := off + int64(done)
		start := pos &^ (dioAlign - 1)
		want := int64(len(p)-done) + (pos - start)
		ln := min((want+dioAlign-1)&^(dioAlign-1), int64(len(buf)))
		n, err := f.ReadAt(buf[:ln], start)
		got := max(int64(n)-(pos-start), 0)
		c := copy(p[done:], buf[pos-start:pos-start+got])
		done += c
		if err != nil {
			if errors.Is(err, io.EOF) && done == len(p) {
				return done, nil
			}
			return done, err
		}
		if int64(n) < ln {
			// Short read without an error: the end of the file.
			if done == len(p) {
				return done, nil
			}
			return done, io.EOF
		}
	}
	return done, nil
}
