package httpx

import (
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
)

func FuzzParseRange(f *testing.F) {
	for _, h := range []string{
		"bytes=0-0", "bytes=0-99", "bytes=5-", "bytes=-5", "bytes=-0", "bytes=100-", "bytes=9-1",
		"bytes=0-1,3-4", "bytes=a-b", "bytes=", "bytes=-", "", " ", "BYTES=0-1", "bytes = 1 - 2 ",
		"items=0-1", "bytes=9223372036854775807-", "bytes=0-9223372036854775807",
		"bytes=99999999999999999999-", "bytes=-9223372036854775808", "bytes=+1-2", "bytes=0x1-2",
		"bytes=1--2", "bytes=\x00-1", strings.Repeat("bytes=0-1", 20),
	} {
		for _, size := range []int64{-1, 0, 1, 10, 1000, math.MaxInt64} {
			f.Add(h, size)
		}
	}
	f.Fuzz(func(t *testing.T, header string, size int64) {
		r, err := ParseRange(header, size)
		if err != nil {
			if !errors.Is(err, ErrRangeMalformed) && !errors.Is(err, ErrRangeUnsatisfiable) {
				t.Fatalf("ParseRange(%q, %d): error %v wraps neither sentinel", header, size, err)
			}
			if r != (Range{}) {
				t.Fatalf("ParseRange(%q, %d): range %+v returned with error", header, size, r)
			}
			return
		}
		if r.Start < 0 || r.Length <= 0 {
			t.Fatalf("ParseRange(%q, %d) = %+v: negative start or empty range", header, size, r)
		}
		if r.End() < r.Start {
			t.Fatalf("ParseRange(%q, %d) = %+v: end overflows", header, size, r)
		}
		if size >= 0 && r.Start+r.Length > size {
			t.Fatalf("ParseRange(%q, %d) = %+v: past the end", header, size, r)
		}
		if len(header) > maxRangeHeader || strings.Contains(header, ",") {
			t.Fatalf("ParseRange(%q, %d) = %+v: accepted an oversized or multi-range header", header, size, r)
		}
		// The range formats to a header that parses back to itself.
		back, err := ParseRange(FormatRange(r.Start, r.Length), size)
		if err != nil || back != r {
			t.Fatalf("ParseRange(FormatRange(%+v)) = %+v, %v", r, back, err)
		}
		if size >= 0 {
			cr, total, err := ParseContentRange(r.ContentRange(size))
			if err != nil || cr != r || total != size {
				t.Fatalf("ParseContentRange(%q) = %+v, %d, %v", r.ContentRange(size), cr, total, err)
			}
		}
	})
}

func FuzzParseContentRange(f *testing.F) {
	for _, v := range []string{
		"bytes 0-0/1", "bytes 0-99/1000", "bytes 0-99/*", "bytes */1000", "bytes 5-4/10", "bytes 0-10/10",
		"bytes 0-9223372036854775807/*", "bytes 0-9223372036854775806/9223372036854775807",
		"BYTES 1-2/3", "bytes  1-2/3", "bytes 1-2", "bytes -1-2/3", "bytes 1-2/-3", "", "bytes",
		"bytes 99999999999999999999-1/2",
	} {
		f.Add(v)
	}
	f.Fuzz(func(t *testing.T, v string) {
		r, total, err := ParseContentRange(v)
		if err != nil {
			if !errors.Is(err, ErrRangeMalformed) {
				t.Fatalf("ParseContentRange(%q): error %v does not wrap ErrRangeMalformed", v, err)
			}
			return
		}
		if r.Start < 0 || r.Length <= 0 || r.End() < r.Start {
			t.Fatalf("ParseContentRange(%q) = %+v: invalid range", v, r)
		}
		if total < -1 || (total >= 0 && r.End() >= total) {
			t.Fatalf("ParseContentRange(%q) = %+v, total %d: past the end", v, r, total)
		}
		want := r.ContentRange(total)
		back, backTotal, err := ParseContentRange(want)
		if err != nil || back != r || backTotal != total {
			t.Fatalf("ParseContentRange(%q) = %+v, %d, %v; want %+v, %d", want, back, backTotal, err, r, total)
		}
		if total >= 0 && !strings.HasSuffix(want, "/"+strconv.FormatInt(total, 10)) {
			t.Fatalf("ContentRange(%d) = %q", total, want)
		}
	})
}
