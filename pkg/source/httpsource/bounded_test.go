package httpsource

import (
	"bytes"
	"net/http"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/source"
)

// cutRange answers a range request like http.ServeContent would (with
// etag), but drops the connection after n body bytes.
func cutRange(t *testing.T, data []byte, etag string, n int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rg, err := httpx.ParseRange(r.Header.Get("Range"), int64(len(data)))
		if err != nil {
			http.Error(w, "bad range", http.StatusBadRequest)
			return
		}
		w.Header().Set("ETag", etag)
		w.Header().Set("Content-Range", rg.ContentRange(int64(len(data))))
		w.Header().Set("Content-Length", strconv.FormatInt(rg.Length, 10))
		w.WriteHeader(http.StatusPartialContent)
		_, _ = w.Write(data[rg.Start : rg.Start+int64(n)])
		_ = http.NewResponseController(w).Flush()
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		_ = brw.Flush()
		_ = conn.Close()
	}
}

func TestFetchBounded(t *testing.T) {
	t.Parallel()
	data := randomBytes(t, 1<<20)
	size := int64(len(data))
	tests := []struct {
		name           string
		handlers       []http.HandlerFunc
		offset, length int64
		want           []byte
		ranges         []string
		ifRanges       []string
	}{
		{
			name:     "middle",
			handlers: []http.HandlerFunc{serve(data, `"v1"`)},
			offset:   1000, length: 5000, want: data[1000:6000],
			ranges: []string{"bytes=1000-5999"}, ifRanges: []string{""},
		},
		{
			name:     "from zero is still a range request",
			handlers: []http.HandlerFunc{serve(data, `"v1"`)},
			length:   4096, want: data[:4096],
			ranges: []string{"bytes=0-4095"}, ifRanges: []string{""},
		},
		{
			name:     "past the end is clamped",
			handlers: []http.HandlerFunc{serve(data, `"v1"`)},
			offset:   size - 100, length: 4096, want: data[size-100:],
			ranges: []string{"bytes=1048476-1052571"}, ifRanges: []string{""},
		},
		{
			name:     "resume within the range",
			handlers: []http.HandlerFunc{cutRange(t, data, `"v1"`, 3000), serve(data, `"v1"`)},
			offset:   10_000, length: 100_000, want: data[10_000:110_000],
			ranges: []string{"bytes=10000-109999", "bytes=13000-109999"}, ifRanges: []string{"", `"v1"`},
		},
		{
			name:     "resume a range from zero",
			handlers: []http.HandlerFunc{cutRange(t, data, `"v1"`, 10), serve(data, `"v1"`)},
			length:   50_000, want: data[:50_000],
			ranges: []string{"bytes=0-49999", "bytes=10-49999"}, ifRanges: []string{"", `"v1"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o := newOrigin(t, tt.handlers...)
			resp, got, err := fetchAll(t, o.client(), source.Request{URL: o.srv.URL + "/blob", Offset: tt.offset, Length: tt.length})
			require.NoError(t, err)
			require.Equal(t, size, resp.Size)
			require.Equal(t, tt.offset, resp.Offset)
			require.True(t, bytes.Equal(tt.want, got), "bytes differ: got %d, want %d", len(got), len(tt.want))
			seen := o.seen()
			require.Len(t, seen, len(tt.ranges))
			for i, h := range seen {
				require.Equal(t, tt.ranges[i], h.Get("Range"), "request %d", i)
				require.Equal(t, tt.ifRanges[i], h.Get("If-Range"), "request %d", i)
			}
		})
	}
}

func TestFetchBoundedErrors(t *testing.T) {
	t.Parallel()
	data := randomBytes(t, 200_000)
	whole := func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(data) }
	require.ErrorIs(t, ErrBadRange, source.ErrBadRange, "the contract's error")
	tests := []struct {
		name           string
		handler        http.HandlerFunc
		offset, length int64
		err            error
	}{
		{name: "200 from an offset", handler: whole, offset: 10, length: 100, err: ErrBadRange},
		{name: "200 from zero", handler: whole, length: 100, err: ErrBadRange},
		{name: "200 from zero for all of it", handler: whole, length: int64(len(data)), err: ErrBadRange},
		{name: "longer range", handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", "bytes 10-199999/200000")
			w.WriteHeader(http.StatusPartialContent)
			_, _ = w.Write(data[10:])
		}, offset: 10, length: 100, err: ErrBadRange},
		{name: "shorter range", handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", "bytes 10-49/200000")
			w.WriteHeader(http.StatusPartialContent)
			_, _ = w.Write(data[10:50])
		}, offset: 10, length: 100, err: ErrBadRange},
		{name: "other start", handler: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", "bytes 0-99/200000")
			w.WriteHeader(http.StatusPartialContent)
			_, _ = w.Write(data[:100])
		}, offset: 10, length: 100, err: ErrBadRange},
		{name: "past the end", handler: serve(data, ""), offset: 200_000, length: 100, err: source.ErrRangeNotSatisfiable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o := newOrigin(t, tt.handler)
			_, _, err := fetchAll(t, o.client(), source.Request{URL: o.srv.URL + "/blob", Offset: tt.offset, Length: tt.length})
			require.ErrorIs(t, err, tt.err)
		})
	}
	o := newOrigin(t, serve(data, ""))
	_, err := o.client().Fetch(t.Context(), source.Request{URL: o.srv.URL + "/blob", Length: -1})
	require.Error(t, err, "a negative length")
}
