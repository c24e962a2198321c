package httpx

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseRanges(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		header  string
		size    int64
		want    []Range
		wantErr error
	}{
		{"single", "bytes=0-99", 1000, []Range{{0, 100}}, nil},
		{"suffix", "bytes=-100", 1000, []Range{{900, 100}}, nil},
		{"open", "bytes=500-", 1000, []Range{{500, 500}}, nil},
		{"probe", "bytes=0-1", 1000, []Range{{0, 2}}, nil},
		{"two in order", "bytes=0-9,20-29", 1000, []Range{{0, 10}, {20, 10}}, nil},
		{"two reversed keep their order", "bytes=20-29,0-9", 1000, []Range{{20, 10}, {0, 10}}, nil},
		{"whitespace", "bytes= 0-9 ,\t20 - 29 , -5", 1000, []Range{{0, 10}, {20, 10}, {995, 5}}, nil},
		{"adjacent coalesced", "bytes=0-9,10-19,20-29", 1000, []Range{{0, 30}}, nil},
		{"overlapping coalesced", "bytes=0-19,10-29", 1000, []Range{{0, 30}}, nil},
		{"contained coalesced", "bytes=0-99,10-19", 1000, []Range{{0, 100}}, nil},
		{"coalesced takes the first member's place", "bytes=500-599,0-9,590-699", 1000, []Range{{500, 200}, {0, 10}}, nil},
		{"suffix overlapping open", "bytes=900-,-50", 1000, []Range{{900, 100}}, nil},
		{"unsatisfiable dropped", "bytes=0-9,2000-2999", 1000, []Range{{0, 10}}, nil},
		{"empty elements ignored", "bytes=,0-9,,", 1000, []Range{{0, 10}}, nil},
		{"end clamped", "bytes=990-5000", 1000, []Range{{990, 10}}, nil},
		{"none satisfiable", "bytes=1000-,2000-2999", 1000, nil, ErrRangeUnsatisfiable},
		{"empty suffix alone", "bytes=-0", 1000, nil, ErrRangeUnsatisfiable},
		{"empty content", "bytes=0-1", 0, nil, ErrRangeUnsatisfiable},
		{"unknown size closed", "bytes=0-9,5-14", -1, []Range{{0, 15}}, nil},
		{"unknown size open dropped", "bytes=0-9,20-", -1, []Range{{0, 10}}, nil},
		{"one malformed spoils all", "bytes=0-9,x-1", 1000, nil, ErrRangeMalformed},
		{"inverted", "bytes=0-9,9-0", 1000, nil, ErrRangeMalformed},
		{"only commas", "bytes=,,", 1000, nil, ErrRangeMalformed},
		{"other unit", "items=0-1", 1000, nil, ErrRangeMalformed},
		{"empty", "", 1000, nil, ErrRangeMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseRanges(tt.header, tt.size)
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
				require.Nil(t, got)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

// stargzHeader is a Range header as stargz-snapshotter sends it: n chunks
// of 50,000 bytes, every other one (so none coalesce).
func stargzHeader(n int) string {
	var b strings.Builder
	b.WriteString("bytes=")
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		start := int64(i) * 100_000
		fmt.Fprintf(&b, "%d-%d", start, start+49_999)
	}
	return b.String()
}

func TestParseRangesBounds(t *testing.T) {
	t.Parallel()
	size := int64(MaxRanges) * 100_000
	rs, err := ParseRanges(stargzHeader(MaxRanges), size)
	require.NoError(t, err)
	require.Len(t, rs, MaxRanges)

	_, err = ParseRanges(stargzHeader(MaxRanges+1), size+100_000)
	require.ErrorIs(t, err, ErrRangeTooLarge, "too many ranges")

	// MaxRanges ranges with the longest positions fit in the header cap.
	pos := strconv.FormatInt(1<<62, 10)
	long := "bytes=" + strings.Repeat(pos+"-"+pos+",", MaxRanges-1) + pos + "-" + pos
	require.LessOrEqual(t, len(long), MaxRangesHeader)
	_, err = ParseRanges(long, 1<<63-1)
	require.NoError(t, err)

	_, err = ParseRanges("bytes=0-1"+strings.Repeat(" ", MaxRangesHeader), 1000)
	require.ErrorIs(t, err, ErrRangeTooLarge, "header too long")

	// A server ignores a Range over the bounds: the whole content.
	b, err := NewBody(stargzHeader(MaxRanges+1), size+100_000, "application/octet-stream")
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, b.Status)
	require.True(t, b.Whole())
	require.Equal(t, size+100_000, b.ContentLength())
}

// memOpen opens ranges of data, recording each call.
type memOpen struct {
	data  []byte
	calls [][2]int64
}

func (m *memOpen) open(off, n int64) (io.ReadCloser, error) {
	m.calls = append(m.calls, [2]int64{off, n})
	end := int64(len(m.data))
	if n >= 0 {
		end = min(end, off+n)
	}
	return io.NopCloser(bytes.NewReader(m.data[off:end])), nil
}

// serveBody answers r over data as a server using Body does.
func serveBody(data []byte, mo *memOpen) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := NewBody(r.Header.Get("Range"), int64(len(data)), "application/octet-stream")
		if err != nil {
			w.Header().Set("Content-Range", UnsatisfiedContentRange(int64(len(data))))
			w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
			return
		}
		b.SetHeader(w.Header())
		if err := b.Open(mo.open); err != nil {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		defer b.Close()
		w.WriteHeader(b.Status)
		if _, err := b.WriteTo(w); err != nil {
			panic(http.ErrAbortHandler)
		}
	})
}

func TestBody(t *testing.T) {
	t.Parallel()
	data := make([]byte, 300_000)
	_, _ = rand.Read(data)
	size := int64(len(data))
	tests := []struct {
		name      string
		rng       string
		status    int
		parts     []Range // for multipart
		opens     [][2]int64
		singleCR  string
		singleLen int
	}{
		{"no range", "", 200, nil, [][2]int64{{0, -1}}, "", len(data)},
		{"whole as a range", "bytes=0-", 206, nil, [][2]int64{{0, -1}}, "bytes 0-299999/300000", len(data)},
		{"probe", "bytes=0-1", 206, nil, [][2]int64{{0, 2}}, "bytes 0-1/300000", 2},
		{"footer", "bytes=-100", 206, nil, [][2]int64{{299_900, 100}}, "bytes 299900-299999/300000", 100},
		{"list coalesced to one", "bytes=0-49999,50000-99999", 206, nil, [][2]int64{{0, 100_000}}, "bytes 0-99999/300000", 100_000},
		{"multipart", "bytes=100000-149999,0-49999,250000-", 206,
			[]Range{{100_000, 50_000}, {0, 50_000}, {250_000, 50_000}},
			[][2]int64{{100_000, 50_000}, {0, 50_000}, {250_000, 50_000}}, "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			mo := &memOpen{data: data}
			srv := httptest.NewServer(serveBody(data, mo))
			defer srv.Close()
			req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL, nil)
			require.NoError(t, err)
			if tt.rng != "" {
				req.Header.Set("Range", tt.rng)
			}
			req.Header.Set("Accept-Encoding", "identity")
			resp, err := srv.Client().Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			require.Equal(t, tt.status, resp.StatusCode)
			require.Equal(t, tt.opens, mo.calls)
			require.Equal(t, int64(len(body)), resp.ContentLength, "Content-Length is exact")
			if tt.parts == nil {
				require.Equal(t, tt.singleCR, resp.Header.Get("Content-Range"))
				require.Len(t, body, tt.singleLen)
				cr := tt.singleCR
				start := int64(0)
				if cr != "" {
					r, total, err := ParseContentRange(cr)
					require.NoError(t, err)
					require.Equal(t, size, total)
					start = r.Start
				}
				require.Equal(t, data[start:start+int64(len(body))], body)
				return
			}
			got := readMultipart(t, resp.Header.Get("Content-Type"), body, data)
			require.Equal(t, tt.parts, got)
		})
	}
}

// readMultipart parses a multipart/byteranges body with Go's reader and
// checks each part's bytes against data; it returns the parts' ranges.
func readMultipart(t *testing.T, contentType string, body, data []byte) []Range {
	t.Helper()
	mt, params, err := mime.ParseMediaType(contentType)
	require.NoError(t, err)
	require.Equal(t, "multipart/byteranges", mt)
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	var got []Range
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		require.Equal(t, "application/octet-stream", p.Header.Get("Content-Type"))
		r, total, err := ParseContentRange(p.Header.Get("Content-Range"))
		require.NoError(t, err)
		require.Equal(t, int64(len(data)), total)
		b, err := io.ReadAll(p)
		require.NoError(t, err)
		require.Equal(t, data[r.Start:r.Start+r.Length], b, "part %+v", r)
		got = append(got, r)
	}
	return got
}

// A whole-content reader that gives every byte but never confirms the
// content: its tail is never written. A partial range is written as read.
func TestBodyHoldBack(t *testing.T) {
	t.Parallel()
	data := make([]byte, 200_000)
	unverified := func(off, n int64) (io.ReadCloser, error) {
		end := int64(len(data))
		if n >= 0 {
			return io.NopCloser(bytes.NewReader(data[off : off+n])), nil
		}
		return io.NopCloser(io.MultiReader(bytes.NewReader(data[off:end]), errorReader{errors.New("digest mismatch")})), nil
	}
	for _, rng := range []string{"", "bytes=0-"} {
		b, err := NewBody(rng, int64(len(data)), "application/octet-stream")
		require.NoError(t, err)
		require.True(t, b.Whole())
		require.NoError(t, b.Open(unverified))
		var out bytes.Buffer
		n, err := b.WriteTo(&out)
		require.Error(t, err)
		require.Equal(t, int64(len(data)-HoldBack), n, "range %q", rng)
	}
	b, err := NewBody("bytes=100-", int64(len(data)), "application/octet-stream")
	require.NoError(t, err)
	require.False(t, b.Whole())
	require.NoError(t, b.Open(unverified))
	var out bytes.Buffer
	_, err = b.WriteTo(&out)
	require.NoError(t, err)
	require.Equal(t, data[100:], out.Bytes())
}

type errorReader struct{ err error }

func (e errorReader) Read([]byte) (int, error) { return 0, e.err }

// A part whose reader fails before its first byte: nothing is written, so
// the server can still answer an error.
func TestBodyNothingBeforeFirstByte(t *testing.T) {
	t.Parallel()
	b, err := NewBody("bytes=0-9,20-29", 100, "application/octet-stream")
	require.NoError(t, err)
	fail := errors.New("no peer has it")
	require.NoError(t, b.Open(func(int64, int64) (io.ReadCloser, error) { return io.NopCloser(errorReader{fail}), nil }))
	var out bytes.Buffer
	n, err := b.WriteTo(&out)
	require.ErrorIs(t, err, fail)
	require.Zero(t, n)
	require.Zero(t, out.Len())

	// A short part is an error, never a clean body.
	b, err = NewBody("bytes=0-9,20-29", 100, "application/octet-stream")
	require.NoError(t, err)
	require.NoError(t, b.Open(func(off, n int64) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(make([]byte, n-1))), nil
	}))
	_, err = b.WriteTo(io.Discard)
	require.ErrorIs(t, err, ErrShortBody)
}
