package httpx

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
)

// HoldBack is how many bytes at the end of a whole-content answer wait for
// the verification of the whole content (see Body).
const HoldBack = 64 << 10

// copyBufSize is the buffer a Body is copied through: a read takes what is
// verified up to that much, so large reads mean few system calls per byte.
const copyBufSize = 1 << 20

var copyBufs = sync.Pool{New: func() any {
	b := make([]byte, copyBufSize)
	return &b
}}

var (
	// ErrShortBody: a reader ended before the bytes its range announced.
	ErrShortBody = errors.New("body shorter than announced")
	// ErrLongBody: a whole-content reader had more bytes than the size.
	ErrLongBody = errors.New("body longer than announced")
)

// Body is the body of a GET answer for content of Size bytes (< 0:
// unknown), built from the request's Range header:
//
//   - no Range, or one over the bounds (ErrRangeTooLarge): the whole
//     content, 200;
//   - one range, alone or what a list coalesced to: 206 with its
//     Content-Range and Content-Length;
//   - several ranges: 206 multipart/byteranges (RFC 9110 §14.6), each part
//     with Content-Type and Content-Range, Content-Length computed exactly;
//   - no satisfiable range: NewBody fails with ErrRangeUnsatisfiable (416,
//     Content-Range from UnsatisfiedContentRange).
//
// A server calls NewBody, SetHeader, then Open (every range's reader is
// opened before the first byte is read, so the source learns every wanted
// range at once), then WriteTo, and Close.
//
// The whole content, whether asked without Range or with one range covering
// [0, Size), is opened with n = -1, whose reader must end with io.EOF only
// once the whole content is verified; WriteTo holds its last HoldBack bytes
// until then, so a client never sees a complete body that was not verified.
// A partial range is not the content and is not held back: it is opened
// with its exact length and its bytes go out as its reader gives them
// (dfdaemon's readers verify each byte against its piece's digest).
type Body struct {
	Status int
	Size   int64
	// Ranges are the ranges sent, in order: one for 200 (Length is Size)
	// and for a single-range 206, several for a multipart 206.
	Ranges []Range

	partType string
	boundary string
	readers  []io.ReadCloser
}

// NewBody resolves rangeHeader ("" for none) against size. contentType is
// the content's media type: the response's, or each part's in a multipart
// answer. Errors wrap ErrRangeMalformed or ErrRangeUnsatisfiable.
func NewBody(rangeHeader string, size int64, contentType string) (*Body, error) {
	b := &Body{Status: http.StatusOK, Size: size, partType: contentType}
	if rangeHeader == "" {
		b.Ranges = []Range{{Start: 0, Length: size}}
		return b, nil
	}
	rs, err := ParseRanges(rangeHeader, size)
	if errors.Is(err, ErrRangeTooLarge) {
		b.Ranges = []Range{{Start: 0, Length: size}}
		return b, nil
	}
	if err != nil {
		return nil, err
	}
	b.Status, b.Ranges = http.StatusPartialContent, rs
	if len(rs) > 1 {
		var p [15]byte
		_, _ = rand.Read(p[:])
		b.boundary = hex.EncodeToString(p[:])
	}
	return b, nil
}

// Whole reports whether the body is the whole content: no Range, or one
// range covering [0, Size).
func (b *Body) Whole() bool {
	return b.Status == http.StatusOK ||
		(len(b.Ranges) == 1 && b.Ranges[0].Start == 0 && b.Size >= 0 && b.Ranges[0].Length == b.Size)
}

// Multipart reports whether the body is multipart/byteranges.
func (b *Body) Multipart() bool { return len(b.Ranges) > 1 }

// ContentLength is the exact length of the body, -1 when the size of the
// whole content is not known.
func (b *Body) ContentLength() int64 {
	if !b.Multipart() {
		return b.Ranges[0].Length
	}
	var n int64
	for i, r := range b.Ranges {
		n += int64(len(b.partHeader(i))) + r.Length
	}
	return n + int64(len(b.closing()))
}

// SetHeader sets Content-Type (the multipart type with its boundary, or
// contentType), Content-Range for a single range and Content-Length.
func (b *Body) SetHeader(h http.Header) {
	if b.Multipart() {
		h.Set("Content-Type", "multipart/byteranges; boundary="+b.boundary)
	} else {
		h.Set("Content-Type", b.partType)
		if b.Status == http.StatusPartialContent {
			h.Set("Content-Range", b.Ranges[0].ContentRange(b.Size))
		}
	}
	if n := b.ContentLength(); n >= 0 {
		h.Set("Content-Length", strconv.FormatInt(n, 10))
	}
}

// partHeader is the delimiter and header of part i.
func (b *Body) partHeader(i int) string {
	lead := "\r\n"
	if i == 0 {
		lead = ""
	}
	return lead + "--" + b.boundary + "\r\nContent-Type: " + b.partType +
		"\r\nContent-Range: " + b.Ranges[i].ContentRange(b.Size) + "\r\n\r\n"
}

func (b *Body) closing() string { return "\r\n--" + b.boundary + "--\r\n" }

// Open opens a reader per range with open(off, n), in order, before any is
// read: n is the range's exact length, or -1 for the whole content (see
// Body). If one fails, those opened are closed and its error returned.
func (b *Body) Open(open func(off, n int64) (io.ReadCloser, error)) error {
	b.readers = make([]io.ReadCloser, 0, len(b.Ranges))
	for _, r := range b.Ranges {
		n := r.Length
		if b.Whole() {
			n = -1
		}
		rc, err := open(r.Start, n)
		if err != nil {
			_ = b.Close()
			return err
		}
		b.readers = append(b.readers, rc)
	}
	return nil
}

// Close closes the readers Open opened. It may be called while WriteTo
// runs, to end a blocked read.
func (b *Body) Close() error {
	var errs []error
	for _, rc := range b.readers {
		errs = append(errs, rc.Close())
	}
	return errors.Join(errs...)
}

// WriteTo writes the body from the readers Open opened. Nothing is written
// before the first range's reader has given its first byte, so a caller
// that delays the status line until the first write can still answer an
// error when that read fails. If w is an http.Flusher it is flushed after
// each write.
func (b *Body) WriteTo(w io.Writer) (int64, error) {
	if len(b.readers) != len(b.Ranges) {
		return 0, errors.New("body not opened")
	}
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	cw := &countWriter{w: w}
	if f, ok := w.(http.Flusher); ok {
		cw.flush = f.Flush
	}
	if !b.Multipart() {
		err := copyRange(cw, b.readers[0], b.Ranges[0].Length, b.Whole(), *bp)
		return cw.n, err
	}
	for i, r := range b.Ranges {
		// The first byte before the part header: see above.
		n, err := readSome(b.readers[i], (*bp)[:min(int64(len(*bp)), r.Length)])
		if n == 0 {
			if err == nil || errors.Is(err, io.EOF) {
				err = fmt.Errorf("%w: part %s empty", ErrShortBody, r.ContentRange(b.Size))
			}
			return cw.n, err
		}
		if _, err := io.WriteString(cw, b.partHeader(i)); err != nil {
			return cw.n, err
		}
		if _, err := cw.Write((*bp)[:n]); err != nil {
			return cw.n, err
		}
		if err := copyRange(cw, b.readers[i], r.Length-int64(n), false, *bp); err != nil {
			return cw.n, err
		}
	}
	_, err := io.WriteString(cw, b.closing())
	return cw.n, err
}

// copyRange copies want bytes (-1: all) from r to w. For the whole content
// (whole), the last HoldBack bytes are written only after r has ended with
// io.EOF, which a whole-content reader returns only once the content is
// verified, and a byte past want is an error.
func copyRange(w io.Writer, r io.Reader, want int64, whole bool, buf []byte) error {
	if want < 0 {
		_, err := io.CopyBuffer(w, r, buf) // io.EOF, and so success, only after verification
		return err
	}
	tail := int64(0)
	if whole {
		tail = min(want, HoldBack)
	}
	if n, err := io.CopyBuffer(w, io.LimitReader(r, want-tail), buf); err != nil {
		return err
	} else if n < want-tail {
		return fmt.Errorf("%w: %d of %d bytes", ErrShortBody, n, want)
	}
	if !whole {
		return nil
	}
	last := make([]byte, tail)
	if _, err := io.ReadFull(r, last); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: tail missing", ErrShortBody)
		}
		return err
	}
	var one [1]byte
	for range 1000 { // a Read returns data, an error, or blocks; bounded anyway
		n, err := r.Read(one[:])
		if n > 0 {
			return ErrLongBody
		}
		if errors.Is(err, io.EOF) {
			_, err := w.Write(last)
			return err
		}
		if err != nil {
			return err
		}
	}
	return io.ErrNoProgress
}

// readSome reads until it gets at least one byte or an error, giving up on
// a reader that keeps returning nothing.
func readSome(r io.Reader, buf []byte) (int, error) {
	for range 100 {
		n, err := r.Read(buf)
		if n > 0 || err != nil {
			return n, err
		}
	}
	return 0, io.ErrNoProgress
}

// countWriter counts what it writes and flushes after each write.
type countWriter struct {
	w     io.Writer
	n     int64
	flush func()
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	if err == nil && c.flush != nil {
		c.flush()
	}
	return n, err
}
