// Package httpx is the net/http plumbing every Damselfly server and client
// shares: byte-range parsing and formatting (RFC 9110 §14), the body of a
// ranged answer (Body: one range or multipart/byteranges), a Prometheus and
// access-log middleware, and JSON responses.
package httpx

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
)

var (
	// ErrRangeMalformed: the Range header is not one well-formed byte range
	// (garbage, several ranges, an inverted range, a number out of range).
	ErrRangeMalformed = errors.New("malformed range")
	// ErrRangeUnsatisfiable: the range starts at or past the end of the
	// content, or is a suffix of zero bytes.
	ErrRangeUnsatisfiable = errors.New("range not satisfiable")
)

const (
	// maxRangeHeader caps the length of a single Range (ParseRange) or
	// Content-Range value parsed.
	maxRangeHeader = 128
	// MaxRangesHeader caps the length of a Range header ParseRanges reads.
	// stargz-snapshotter asks for every chunk a read misses in one request
	// ("bytes=a-b,c-d,…", 50,000-byte chunks, coalesced when adjacent);
	// MaxRanges ranges of 19-digit positions fit in it.
	MaxRangesHeader = 64 << 10
	// MaxRanges caps the ranges one Range header may list (before
	// coalescing); a longer list is ErrRangeMalformed. It bounds the parts,
	// readers and want registrations one request can cost.
	MaxRanges = 1000
	// maxDigits is the most decimal digits an int64 byte position can have.
	maxDigits = 19
)

// Range is a resolved byte range: Length bytes from Start.
type Range struct {
	Start  int64
	Length int64
}

// End returns the last byte position of the range (inclusive).
func (r Range) End() int64 { return r.Start + r.Length - 1 }

// ContentRange formats the Content-Range value of a response carrying r of
// content of size bytes ("bytes 0-99/1000"; "bytes 0-99/*" when size < 0).
func (r Range) ContentRange(size int64) string {
	total := "*"
	if size >= 0 {
		total = strconv.FormatInt(size, 10)
	}
	return fmt.Sprintf("bytes %d-%d/%s", r.Start, r.End(), total)
}

// UnsatisfiedContentRange formats the Content-Range value of a 416 response
// for content of size bytes ("bytes */1000").
func UnsatisfiedContentRange(size int64) string {
	return "bytes */" + strconv.FormatInt(size, 10)
}

// FormatRange formats a Range request header for length bytes from start;
// length <= 0 asks for everything from start ("bytes=start-").
func FormatRange(start, length int64) string {
	if length <= 0 {
		return fmt.Sprintf("bytes=%d-", start)
	}
	return fmt.Sprintf("bytes=%d-%d", start, start+length-1)
}

// ParseRange parses a Range header holding exactly one byte range
// ("bytes=a-b", "bytes=a-", "bytes=-n") against content of size bytes and
// returns the range it selects, its end clamped to the content's end.
//
// A size < 0 means the size is not known yet: then only "bytes=a-b" can be
// resolved, and it is returned as asked; open-ended and suffix ranges are
// ErrRangeUnsatisfiable.
//
// Whitespace around the header, around "=" and around each number is
// ignored. Errors wrap ErrRangeMalformed or ErrRangeUnsatisfiable.
func ParseRange(header string, size int64) (Range, error) {
	if len(header) > maxRangeHeader {
		return Range{}, fmt.Errorf("range header of %d bytes: %w", len(header), ErrRangeMalformed)
	}
	spec, err := rangeSpecs(header)
	if err != nil {
		return Range{}, err
	}
	if strings.Contains(spec, ",") {
		return Range{}, fmt.Errorf("range %q: several ranges: %w", header, ErrRangeMalformed)
	}
	r, err := parseSpec(spec, size)
	if err != nil {
		return Range{}, fmt.Errorf("range %q: %w", header, err)
	}
	return r, nil
}

// rangeSpecs returns what follows "bytes=" in a Range header.
func rangeSpecs(header string) (string, error) {
	unit, spec, ok := strings.Cut(strings.TrimSpace(header), "=")
	if !ok || !strings.EqualFold(strings.TrimSpace(unit), "bytes") {
		return "", fmt.Errorf("range %q: not a byte range: %w", header, ErrRangeMalformed)
	}
	return spec, nil
}

// parseSpec resolves one range-spec ("a-b", "a-", "-n") against content
// of size bytes (< 0: unknown), as ParseRange describes.
func parseSpec(spec string, size int64) (Range, error) {
	first, last, ok := strings.Cut(spec, "-")
	if !ok {
		return Range{}, fmt.Errorf("%q: no '-': %w", spec, ErrRangeMalformed)
	}
	first, last = strings.TrimSpace(first), strings.TrimSpace(last)

	if first == "" { // suffix: the last n bytes
		n, err := parsePos(last)
		if err != nil {
			return Range{}, err
		}
		if n == 0 {
			return Range{}, fmt.Errorf("empty suffix: %w", ErrRangeUnsatisfiable)
		}
		if size < 0 {
			return Range{}, fmt.Errorf("suffix of unknown size: %w", ErrRangeUnsatisfiable)
		}
		if size == 0 {
			return Range{}, fmt.Errorf("empty content: %w", ErrRangeUnsatisfiable)
		}
		n = min(n, size)
		return Range{Start: size - n, Length: n}, nil
	}

	start, err := parsePos(first)
	if err != nil {
		return Range{}, err
	}
	end := int64(-1) // open-ended
	if last != "" {
		if end, err = parsePos(last); err != nil {
			return Range{}, err
		}
		if end < start {
			return Range{}, fmt.Errorf("%q inverted: %w", spec, ErrRangeMalformed)
		}
	}
	if size < 0 {
		if end < 0 {
			return Range{}, fmt.Errorf("open range of unknown size: %w", ErrRangeUnsatisfiable)
		}
		if end == math.MaxInt64 {
			return Range{}, fmt.Errorf("%q: %w", spec, ErrRangeMalformed)
		}
		return Range{Start: start, Length: end - start + 1}, nil
	}
	if start >= size {
		return Range{}, fmt.Errorf("%q of %d bytes: %w", spec, size, ErrRangeUnsatisfiable)
	}
	if end < 0 || end >= size {
		end = size - 1
	}
	return Range{Start: start, Length: end - start + 1}, nil
}

// ParseRanges parses a Range header listing one or more byte ranges
// ("bytes=0-99, 200-299, -50, 900-") against content of size bytes and
// returns the ranges to send, in the order the header lists them.
//
//   - A range that starts at or past the end of the content (or an empty
//     suffix) is not satisfiable and is dropped; if none is left the error
//     wraps ErrRangeUnsatisfiable (RFC 9110 §14.1.1: 416 only when no range
//     is satisfiable).
//   - Ranges that overlap or touch are coalesced into one (RFC 9110 §14.2
//     allows it; a coalesced range takes the place of the first of its
//     members). So a request never makes the server send a byte twice, and
//     a list of adjacent chunks becomes a single range.
//   - The header is at most MaxRangesHeader bytes and lists at most
//     MaxRanges ranges; empty list elements are ignored. A range-spec that
//     does not parse, an inverted one, or a header over the bounds makes the
//     whole header ErrRangeMalformed.
//
// A size < 0 (unknown) resolves only closed ranges, as ParseRange does;
// suffix and open ranges are then dropped as unsatisfiable, and only
// overlapping closed ranges are coalesced.
func ParseRanges(header string, size int64) ([]Range, error) {
	if len(header) > MaxRangesHeader {
		return nil, fmt.Errorf("range header of %d bytes: %w", len(header), ErrRangeMalformed)
	}
	specs, err := rangeSpecs(header)
	if err != nil {
		return nil, err
	}
	var (
		ranges []Range
		n      int
	)
	for spec := range strings.SplitSeq(specs, ",") {
		if strings.TrimSpace(spec) == "" {
			continue
		}
		if n++; n > MaxRanges {
			return nil, fmt.Errorf("range header lists more than %d ranges: %w", MaxRanges, ErrRangeMalformed)
		}
		r, err := parseSpec(spec, size)
		switch {
		case errors.Is(err, ErrRangeUnsatisfiable):
			continue
		case err != nil:
			return nil, fmt.Errorf("range header: %w", err)
		}
		ranges = append(ranges, r)
	}
	if n == 0 {
		return nil, fmt.Errorf("range %q: no range: %w", header, ErrRangeMalformed)
	}
	if len(ranges) == 0 {
		return nil, fmt.Errorf("range header: none of %d ranges within %d bytes: %w", n, size, ErrRangeUnsatisfiable)
	}
	return coalesce(ranges), nil
}

// coalesce merges the ranges that overlap or touch. Each merged range takes
// the place of its first member in rs; the others keep their order.
func coalesce(rs []Range) []Range {
	if len(rs) < 2 {
		return rs
	}
	idx := make([]int, len(rs))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		switch {
		case rs[a].Start < rs[b].Start:
			return -1
		case rs[a].Start > rs[b].Start:
			return 1
		}
		return 0
	})
	type group struct {
		r     Range
		first int // the position of its first member in rs
	}
	var groups []group
	for _, i := range idx {
		r := rs[i]
		if k := len(groups) - 1; k >= 0 && r.Start <= groups[k].r.End()+1 { // overlaps or touches
			g := &groups[k]
			if end := r.End(); end > g.r.End() {
				g.r.Length = end - g.r.Start + 1
			}
			g.first = min(g.first, i)
			continue
		}
		groups = append(groups, group{r: r, first: i})
	}
	slices.SortFunc(groups, func(a, b group) int { return a.first - b.first })
	out := make([]Range, len(groups))
	for i, g := range groups {
		out[i] = g.r
	}
	return out
}

// parsePos parses a non-negative decimal byte position: digits only, no
// sign, no more than an int64 holds.
func parsePos(s string) (int64, error) {
	if s == "" || len(s) > maxDigits {
		return 0, fmt.Errorf("position %q: %w", s, ErrRangeMalformed)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("position %q: %w", s, ErrRangeMalformed)
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("position %q: %w", s, ErrRangeMalformed)
	}
	return n, nil
}

// ParseContentRange parses the Content-Range value of a 206 response,
// "bytes first-last/total" or "bytes first-last/*", and returns the range
// and the total size (-1 for "*"). Errors wrap ErrRangeMalformed.
func ParseContentRange(v string) (Range, int64, error) {
	if len(v) > maxRangeHeader {
		return Range{}, 0, fmt.Errorf("content-range of %d bytes: %w", len(v), ErrRangeMalformed)
	}
	unit, rest, ok := strings.Cut(strings.TrimSpace(v), " ")
	if !ok || !strings.EqualFold(unit, "bytes") {
		return Range{}, 0, fmt.Errorf("content-range %q: %w", v, ErrRangeMalformed)
	}
	span, totalS, ok := strings.Cut(strings.TrimSpace(rest), "/")
	if !ok {
		return Range{}, 0, fmt.Errorf("content-range %q: %w", v, ErrRangeMalformed)
	}
	firstS, lastS, ok := strings.Cut(span, "-")
	if !ok {
		return Range{}, 0, fmt.Errorf("content-range %q: %w", v, ErrRangeMalformed)
	}
	first, err := parsePos(firstS)
	if err != nil {
		return Range{}, 0, fmt.Errorf("content-range %q: %w", v, err)
	}
	last, err := parsePos(lastS)
	if err != nil {
		return Range{}, 0, fmt.Errorf("content-range %q: %w", v, err)
	}
	if last < first || last == math.MaxInt64 {
		return Range{}, 0, fmt.Errorf("content-range %q: %w", v, ErrRangeMalformed)
	}
	total := int64(-1)
	if totalS != "*" {
		if total, err = parsePos(totalS); err != nil {
			return Range{}, 0, fmt.Errorf("content-range %q: %w", v, err)
		}
		if last >= total {
			return Range{}, 0, fmt.Errorf("content-range %q: past the end: %w", v, ErrRangeMalformed)
		}
	}
	return Range{Start: first, Length: last - first + 1}, total, nil
}

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
//   - no Range: the whole content, 200;
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
