package httpx

import (
	"bytes"
	"errors"
	"io"
	"math"
	"mime"
	"mime/multipart"
	"net/http"
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

func FuzzParseRanges(f *testing.F) {
	for _, h := range []string{
		"bytes=0-0", "bytes=0-99,200-299", "bytes=-5,0-1", "bytes=5-,0-9", "bytes=0-9,10-19,20-29",
		"bytes=20-29,0-9", "bytes=,,0-1,", "bytes=0-1,x", "bytes=9-1,0-1", "bytes= 0 - 1 , - 2 ",
		"bytes=1000-,2000-", "bytes=-0,-0", "bytes=0-" + strings.Repeat("9", 19), stargzHeader(3),
	} {
		for _, size := range []int64{-1, 0, 1, 10, 1000, 1 << 20, math.MaxInt64} {
			f.Add(h, size)
		}
	}
	f.Fuzz(func(t *testing.T, header string, size int64) {
		rs, err := ParseRanges(header, size)
		if err != nil {
			if !errors.Is(err, ErrRangeMalformed) && !errors.Is(err, ErrRangeUnsatisfiable) && !errors.Is(err, ErrRangeTooLarge) {
				t.Fatalf("ParseRanges(%q, %d): error %v wraps no sentinel", header, size, err)
			}
			if rs != nil {
				t.Fatalf("ParseRanges(%q, %d): ranges with error", header, size)
			}
			return
		}
		if len(rs) == 0 || len(rs) > MaxRanges || len(header) > MaxRangesHeader {
			t.Fatalf("ParseRanges(%q, %d) = %d ranges", header, size, len(rs))
		}
		for i, r := range rs {
			if r.Start < 0 || r.Length <= 0 || r.End() < r.Start || (size >= 0 && r.End() >= size) {
				t.Fatalf("ParseRanges(%q, %d): range %+v out of bounds", header, size, r)
			}
			for _, o := range rs[i+1:] {
				if r.Start <= o.End()+1 && o.Start <= r.End()+1 {
					t.Fatalf("ParseRanges(%q, %d): %+v and %+v overlap or touch", header, size, r, o)
				}
			}
		}
		// A single range is what ParseRange says too.
		if one, err := ParseRange(header, size); err == nil && (len(rs) != 1 || rs[0] != one) {
			t.Fatalf("ParseRange(%q, %d) = %+v, ParseRanges = %+v", header, size, one, rs)
		}
		if size < 0 || size > 1<<16 {
			return
		}
		// The body's announced length is the length written, and every part
		// parses back.
		b, err := NewBody(header, size, "application/octet-stream")
		if err != nil {
			t.Fatalf("NewBody(%q, %d): %v", header, size, err)
		}
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(i)
		}
		if err := b.Open(func(off, n int64) (io.ReadCloser, error) {
			if n < 0 {
				n = size - off
			}
			return io.NopCloser(bytes.NewReader(data[off : off+n])), nil
		}); err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		n, err := b.WriteTo(&out)
		if err != nil || n != b.ContentLength() || int64(out.Len()) != n {
			t.Fatalf("NewBody(%q, %d): wrote %d (%v), announced %d", header, size, n, err, b.ContentLength())
		}
		if b.Multipart() {
			h := http.Header{}
			b.SetHeader(h)
			_, params, err := mime.ParseMediaType(h.Get("Content-Type"))
			if err != nil {
				t.Fatal(err)
			}
			mr := multipart.NewReader(&out, params["boundary"])
			for i := 0; ; i++ {
				p, err := mr.NextPart()
				if errors.Is(err, io.EOF) {
					if i != len(b.Ranges) {
						t.Fatalf("%d parts, want %d", i, len(b.Ranges))
					}
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				got, _ := io.ReadAll(p)
				r := b.Ranges[i]
				if p.Header.Get("Content-Range") != r.ContentRange(size) || !bytes.Equal(got, data[r.Start:r.Start+r.Length]) {
					t.Fatalf("part %d of %q wrong", i, header)
				}
			}
		}
	})
}
