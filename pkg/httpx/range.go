// Package httpx is the net/http plumbing every Damselfly server and client
// shares: byte-range parsing and formatting (RFC 9110 §14), the body of a
// ranged answer (Body: one range or multipart/byteranges), a Prometheus and
// access-log middleware, and JSON responses.
package httpx

import (
	"errors"
	"fmt"
	"math"
	"slices"
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
	// ErrRangeTooLarge: a Range header longer than MaxRangesHeader or
	// listing more than MaxRanges ranges. A server may ignore such a header
	// (RFC 9110 §14.2), and NewBody does: the answer is the whole content,
	// which every client that sends a Range also accepts, rather than an
	// error that would fail the client's read.
	ErrRangeTooLarge = errors.New("range header too large")
)

const (
	// maxRangeHeader caps the length of a single Range (ParseRange) or
	// Content-Range value parsed.
	maxRangeHeader = 128
	// MaxRangesHeader caps the length of a Range header ParseRanges reads:
	// the default bound of a dfdaemon request's whole header section
	// (proxy.maxHeaderBytes), so a header the listener admits is never too
	// long here. stargz-snapshotter asks for every chunk a read misses in
	// one request ("bytes=a-b,c-d,…", 50,000-byte chunks, adjacent ones
	// merged); MaxRanges ranges of 19-digit positions fit in it.
	MaxRangesHeader = 64 << 10
	// MaxRanges caps the ranges one Range header may list (before
	// coalescing). It bounds the parts, readers and wanted-piece
	// registrations one request can cost: at 50,000-byte chunks, 1000
	// ranges are 50 MB, more than one read of a lazy puller asks for.
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
//   - Empty list elements are ignored. A range-spec that does not parse or
//     an inverted one makes the whole header ErrRangeMalformed.
//   - A header longer than MaxRangesHeader bytes or listing more than
//     MaxRanges ranges is ErrRangeTooLarge.
//
// A size < 0 (unknown) resolves only closed ranges, as ParseRange does;
// suffix and open ranges are then dropped as unsatisfiable, and only
// overlapping closed ranges are coalesced.
func ParseRanges(header string, size int64) ([]Range, error) {
	if len(header) > MaxRangesHeader {
		return nil, fmt.Errorf("range header of %d bytes: %w", len(header), ErrRangeTooLarge)
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
			return nil, fmt.Errorf("range header lists more than %d ranges: %w", MaxRanges, ErrRangeTooLarge)
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
