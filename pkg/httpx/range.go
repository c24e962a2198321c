// Package httpx is the net/http plumbing every Damselfly server and client
// shares: single byte-range parsing and formatting (RFC 9110 §14), a
// Prometheus and access-log middleware, and JSON responses.
package httpx

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
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
	// maxRangeHeader caps the length of a Range or Content-Range value parsed.
	maxRangeHeader = 128
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
	unit, spec, ok := strings.Cut(strings.TrimSpace(header), "=")
	if !ok || !strings.EqualFold(strings.TrimSpace(unit), "bytes") {
		return Range{}, fmt.Errorf("range %q: not a byte range: %w", header, ErrRangeMalformed)
	}
	if strings.Contains(spec, ",") {
		return Range{}, fmt.Errorf("range %q: several ranges: %w", header, ErrRangeMalformed)
	}
	first, last, ok := strings.Cut(spec, "-")
	if !ok {
		return Range{}, fmt.Errorf("range %q: no '-': %w", header, ErrRangeMalformed)
	}
	first, last = strings.TrimSpace(first), strings.TrimSpace(last)

	if first == "" { // suffix: the last n bytes
		n, err := parsePos(last)
		if err != nil {
			return Range{}, fmt.Errorf("range %q: %w", header, err)
		}
		if n == 0 {
			return Range{}, fmt.Errorf("range %q: empty suffix: %w", header, ErrRangeUnsatisfiable)
		}
		if size < 0 {
			return Range{}, fmt.Errorf("range %q: suffix of unknown size: %w", header, ErrRangeUnsatisfiable)
		}
		if size == 0 {
			return Range{}, fmt.Errorf("range %q: empty content: %w", header, ErrRangeUnsatisfiable)
		}
		n = min(n, size)
		return Range{Start: size - n, Length: n}, nil
	}

	start, err := parsePos(first)
	if err != nil {
		return Range{}, fmt.Errorf("range %q: %w", header, err)
	}
	end := int64(-1) // open-ended
	if last != "" {
		if end, err = parsePos(last); err != nil {
			return Range{}, fmt.Errorf("range %q: %w", header, err)
		}
		if end < start {
			return Range{}, fmt.Errorf("range %q: inverted: %w", header, ErrRangeMalformed)
		}
	}
	if size < 0 {
		if end < 0 {
			return Range{}, fmt.Errorf("range %q: open range of unknown size: %w", header, ErrRangeUnsatisfiable)
		}
		if end == math.MaxInt64 {
			return Range{}, fmt.Errorf("range %q: %w", header, ErrRangeMalformed)
		}
		return Range{Start: start, Length: end - start + 1}, nil
	}
	if start >= size {
		return Range{}, fmt.Errorf("range %q of %d bytes: %w", header, size, ErrRangeUnsatisfiable)
	}
	if end < 0 || end >= size {
		end = size - 1
	}
	return Range{Start: start, Length: end - start + 1}, nil
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
