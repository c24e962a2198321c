package httpsource

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/damselfly/damselfly/pkg/source"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

// origin is a test server that records every request's Range and If-Range
// and answers with the handler of its attempt number (the last one repeats).
type origin struct {
	srv      *httptest.Server
	mu       sync.Mutex
	requests []http.Header
	handlers []http.HandlerFunc
}

func newOrigin(t *testing.T, handlers ...http.HandlerFunc) *origin {
	t.Helper()
	o := &origin{handlers: handlers}
	o.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.mu.Lock()
		i := len(o.requests)
		o.requests = append(o.requests, r.Header.Clone())
		o.mu.Unlock()
		o.handlers[min(i, len(o.handlers)-1)](w, r)
	}))
	t.Cleanup(o.srv.Close)
	return o
}

func (o *origin) seen() []http.Header {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]http.Header(nil), o.requests...)
}

func (o *origin) client(opts ...Option) *Client {
	return New(append([]Option{WithHTTPClient(o.srv.Client()), WithBackoff(time.Millisecond, 20*time.Millisecond)}, opts...)...)
}

// serve answers with data, honouring Range and If-Range against etag.
func serve(data []byte, etag string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if etag != "" {
			w.Header().Set("ETag", etag)
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
	}
}

// cut answers like serve but drops the connection after n body bytes.
func cut(t *testing.T, data []byte, etag string, n int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		start := 0
		if rg := r.Header.Get("Range"); rg != "" {
			var err error
			start, err = strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(rg, "bytes="), "-"))
			if err != nil {
				http.Error(w, "bad range", http.StatusBadRequest)
				return
			}
			w.Header().Set("Content-Range", "bytes "+strconv.Itoa(start)+"-"+strconv.Itoa(len(data)-1)+"/"+strconv.Itoa(len(data)))
		}
		if etag != "" {
			w.Header().Set("ETag", etag)
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(data)-start))
		if start > 0 {
			w.WriteHeader(http.StatusPartialContent)
		}
		_, _ = w.Write(data[start : start+n])
		_ = http.NewResponseController(w).Flush()
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		_ = brw.Flush() // the bytes written so far reach the client
		_ = conn.Close()
	}
}

func status(code int, header ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		http.Error(w, http.StatusText(code), code)
	}
}

func fetchAll(t *testing.T, c *Client, req source.Request) (*source.Response, []byte, error) {
	t.Helper()
	resp, err := c.Fetch(t.Context(), req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	got, err := io.ReadAll(resp.Body)
	return resp, got, err
}

func TestFetch(t *testing.T) {
	t.Parallel()
	data := randomBytes(t, 1<<20)
	tests := []struct {
		name     string
		handlers []http.HandlerFunc
		offset   int64
		want     []byte
		size     int64
		ranges   []string // Range header of each request
		ifRanges []string // If-Range header of each request
	}{
		{
			name:     "full",
			handlers: []http.HandlerFunc{serve(data, `"v1"`)},
			want:     data, size: int64(len(data)),
			ranges: []string{""}, ifRanges: []string{""},
		},
		{
			name:     "offset",
			handlers: []http.HandlerFunc{serve(data, `"v1"`)},
			offset:   1000, want: data[1000:], size: int64(len(data)),
			ranges: []string{"bytes=1000-"}, ifRanges: []string{""},
		},
		{
			name:     "resume after cut",
			handlers: []http.HandlerFunc{cut(t, data, `"v1"`, 300_000), serve(data, `"v1"`)},
			want:     data, size: int64(len(data)),
			ranges: []string{"", "bytes=300000-"}, ifRanges: []string{"", `"v1"`},
		},
		{
			name: "resume twice",
			handlers: []http.HandlerFunc{
				cut(t, data, `"v1"`, 100_000), cut(t, data, `"v1"`, 50_000), serve(data, `"v1"`),
			},
			want: data, size: int64(len(data)),
			ranges: []string{"", "bytes=100000-", "bytes=150000-"}, ifRanges: []string{"", `"v1"`, `"v1"`},
		},
		{
			name: "resume an offset fetch",
			handlers: []http.HandlerFunc{
				cut(t, data, `"v1"`, 10), serve(data, `"v1"`),
			},
			offset: 500, want: data[500:], size: int64(len(data)),
			ranges: []string{"bytes=500-", "bytes=510-"}, ifRanges: []string{"", `"v1"`},
		},
		{
			name:     "503 then 200",
			handlers: []http.HandlerFunc{status(503), status(502), serve(data, "")},
			want:     data, size: int64(len(data)),
			ranges: []string{"", "", ""}, ifRanges: []string{"", "", ""},
		},
		{
			name: "unknown size",
			handlers: []http.HandlerFunc{func(w http.ResponseWriter, r *http.Request) {
				for off := 0; off < len(data); off += 100_000 {
					_, _ = w.Write(data[off:min(off+100_000, len(data))])
					_ = http.NewResponseController(w).Flush()
				}
			}},
			want: data, size: -1,
			ranges: []string{""}, ifRanges: []string{""},
		},
		{
			name: "resume with last-modified",
			handlers: []http.HandlerFunc{
				func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Last-Modified", "Mon, 02 Jan 2006 15:04:05 GMT")
					cut(t, data, "", 1000)(w, r)
				},
				func(w http.ResponseWriter, r *http.Request) {
					http.ServeContent(w, r, "", time.Date(2006, 1, 2, 15, 4, 5, 0, time.UTC), bytes.NewReader(data))
				},
			},
			want: data, size: int64(len(data)),
			ranges: []string{"", "bytes=1000-"}, ifRanges: []string{"", "Mon, 02 Jan 2006 15:04:05 GMT"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o := newOrigin(t, tt.handlers...)
			resp, got, err := fetchAll(t, o.client(), source.Request{URL: o.srv.URL + "/blob", Offset: tt.offset})
			require.NoError(t, err)
			require.Equal(t, tt.size, resp.Size)
			require.Equal(t, tt.offset, resp.Offset)
			require.True(t, bytes.Equal(tt.want, got), "bytes differ: got %d, want %d", len(got), len(tt.want))
			seen := o.seen()
			require.Len(t, seen, len(tt.ranges))
			for i, h := range seen {
				require.Equal(t, tt.ranges[i], h.Get("Range"), "request %d", i)
				require.Equal(t, tt.ifRanges[i], h.Get("If-Range"), "request %d", i)
				require.Equal(t, "identity", h.Get("Accept-Encoding"))
			}
		})
	}
}

func TestFetchErrors(t *testing.T) {
	t.Parallel()
	data := randomBytes(t, 200_000)
	tests := []struct {
		name     string
		handlers []http.HandlerFunc
		offset   int64
		retries  int
		fetchErr error // from Fetch
		readErr  error // from reading the body
		status   int   // a *source.StatusError's code
		requests int
	}{
		{name: "404", handlers: []http.HandlerFunc{status(404)}, fetchErr: source.ErrNotFound, requests: 1},
		{name: "410", handlers: []http.HandlerFunc{status(410)}, fetchErr: source.ErrNotFound, requests: 1},
		{name: "416", handlers: []http.HandlerFunc{serve(data, "")}, offset: 200_000, fetchErr: source.ErrRangeNotSatisfiable, requests: 1},
		{name: "403 not retried", handlers: []http.HandlerFunc{status(403)}, status: 403, requests: 1},
		{name: "500 until out of retries", handlers: []http.HandlerFunc{status(500)}, retries: 2, status: 500, requests: 3},
		{name: "range ignored", handlers: []http.HandlerFunc{func(w http.ResponseWriter, r *http.Request) {
			_, _ = w.Write(data)
		}}, offset: 10, fetchErr: ErrBadRange, requests: 1},
		{name: "wrong range", handlers: []http.HandlerFunc{func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Range", "bytes 0-9/200000")
			w.WriteHeader(http.StatusPartialContent)
			_, _ = w.Write(data[:10])
		}}, offset: 10, fetchErr: ErrBadRange, requests: 1},
		{
			name:     "resume refused when the etag changes",
			handlers: []http.HandlerFunc{cut(t, data, `"v1"`, 5000), serve(data, `"v2"`)},
			readErr:  ErrContentChanged, requests: 2,
		},
		{
			name:     "resume refused when the size changes",
			handlers: []http.HandlerFunc{cut(t, data, `"v1"`, 5000), serve(data[:150_000], `"v1"`)},
			readErr:  ErrContentChanged, requests: 2,
		},
		{
			name:     "no validator",
			handlers: []http.HandlerFunc{cut(t, data, "", 5000)},
			readErr:  ErrNotResumable, requests: 1,
		},
		{
			name:     "weak etag is no validator",
			handlers: []http.HandlerFunc{cut(t, data, `W/"v1"`, 5000)},
			readErr:  ErrNotResumable, requests: 1,
		},
		{
			name:     "cut every time without progress",
			handlers: []http.HandlerFunc{cut(t, data, `"v1"`, 0)},
			retries:  2, readErr: io.ErrUnexpectedEOF, requests: 3,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o := newOrigin(t, tt.handlers...)
			retries := tt.retries
			if retries == 0 {
				retries = 3
			}
			resp, got, err := fetchAll(t, o.client(WithRetries(retries)), source.Request{URL: o.srv.URL + "/x?sig=secret", Offset: tt.offset})
			require.Error(t, err)
			require.NotContains(t, err.Error(), "secret")
			switch {
			case tt.fetchErr != nil:
				require.Nil(t, resp)
				require.ErrorIs(t, err, tt.fetchErr)
			case tt.readErr != nil:
				require.NotNil(t, resp, "the failure comes from the body: %v", err)
				require.ErrorIs(t, err, tt.readErr)
				require.Less(t, len(got), len(data))
				require.Equal(t, data[:len(got)], got, "what was read is a prefix")
			case tt.status != 0:
				var se *source.StatusError
				require.ErrorAs(t, err, &se)
				require.Equal(t, tt.status, se.StatusCode)
				require.NotContains(t, se.URL, "secret")
			}
			require.Len(t, o.seen(), tt.requests)
		})
	}
}

func TestRetryAfter(t *testing.T) {
	t.Parallel()
	data := []byte("after a while")
	o := newOrigin(t, status(429, "Retry-After", "1"), serve(data, ""))
	c := New(WithHTTPClient(o.srv.Client()), WithBackoff(time.Millisecond, 3*time.Second))
	start := time.Now()
	_, got, err := fetchAll(t, c, source.Request{URL: o.srv.URL})
	require.NoError(t, err)
	require.Equal(t, data, got)
	require.GreaterOrEqual(t, time.Since(start), 900*time.Millisecond, "Retry-After honoured")

	// A Retry-After beyond the maximum backoff is cut to it.
	o = newOrigin(t, status(503, "Retry-After", "3600"), serve(data, ""))
	c = New(WithHTTPClient(o.srv.Client()), WithBackoff(time.Millisecond, 50*time.Millisecond))
	start = time.Now()
	_, got, err = fetchAll(t, c, source.Request{URL: o.srv.URL})
	require.NoError(t, err)
	require.Equal(t, data, got)
	require.Less(t, time.Since(start), time.Second)
}

func TestRetryHonoursContext(t *testing.T) {
	t.Parallel()
	o := newOrigin(t, status(503, "Retry-After", "30"))
	c := New(WithHTTPClient(o.srv.Client()), WithBackoff(time.Second, time.Minute))
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Fetch(ctx, source.Request{URL: o.srv.URL})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Less(t, time.Since(start), 2*time.Second)
}

func TestResumeAfterStall(t *testing.T) {
	t.Parallel()
	data := randomBytes(t, 100_000)
	stall := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ETag", `"s"`)
		w.Header().Set("Content-Length", strconv.Itoa(len(data)))
		_, _ = w.Write(data[:40_000])
		_ = http.NewResponseController(w).Flush()
		<-r.Context().Done() // until the client gives up on this response
	}
	o := newOrigin(t, stall, serve(data, `"s"`))
	c := o.client(WithIdleTimeout(150 * time.Millisecond))
	start := time.Now()
	resp, got, err := fetchAll(t, c, source.Request{URL: o.srv.URL})
	require.NoError(t, err)
	require.Equal(t, int64(len(data)), resp.Size)
	require.Equal(t, data, got)
	require.GreaterOrEqual(t, time.Since(start), 150*time.Millisecond)
	seen := o.seen()
	require.Len(t, seen, 2)
	require.Equal(t, "bytes=40000-", seen[1].Get("Range"))
}

func TestConnectionRefusedRetried(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	c := New(WithRetries(2), WithBackoff(time.Millisecond, 5*time.Millisecond))
	_, err = c.Fetch(t.Context(), source.Request{URL: "http://" + addr + "/x"})
	require.ErrorIs(t, err, syscall.ECONNREFUSED)
}

func TestUnsupported(t *testing.T) {
	t.Parallel()
	c := New()
	for _, u := range []string{"ftp://example.com/x", "file:///etc/passwd", "example.com/x"} {
		_, err := c.Fetch(t.Context(), source.Request{URL: u})
		require.ErrorIs(t, err, source.ErrUnsupported, u)
	}
	_, err := c.Fetch(t.Context(), source.Request{URL: "http:///nohost"})
	require.Error(t, err)
	_, err = c.Fetch(t.Context(), source.Request{URL: "http://127.0.0.1:1/", Offset: -1})
	require.Error(t, err)
}

func TestHeadersSentNeverLogged(t *testing.T) {
	t.Parallel()
	data := randomBytes(t, 50_000)
	var auth atomic.Value
	record := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			auth.Store(r.Header.Get("Authorization"))
			h(w, r)
		}
	}
	o := newOrigin(t, record(status(503)), record(cut(t, data, `"e"`, 100)), record(serve(data, `"e"`)))
	core, logs := observer.New(zapcore.DebugLevel)
	c := o.client(WithLogger(zap.New(core)))
	_, got, err := fetchAll(t, c, source.Request{
		URL:    o.srv.URL + "/blob?token=secret-query",
		Header: http.Header{"Authorization": {"Bearer secret-header"}},
	})
	require.NoError(t, err)
	require.Equal(t, data, got)
	require.Equal(t, "Bearer secret-header", auth.Load(), "headers go with every request, resumes included")
	require.NotEmpty(t, logs.All(), "retries and resumes are logged")
	for _, e := range logs.All() {
		require.NotContains(t, e.Message, "secret")
		for k, v := range e.ContextMap() {
			require.NotContains(t, toString(v), "secret", "field %s", k)
		}
	}
}

func TestDefaultClientRedirectCap(t *testing.T) {
	t.Parallel()
	var hops atomic.Int64
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hops.Add(1)
		http.Redirect(w, r, srv.URL+"/again", http.StatusFound)
	}))
	t.Cleanup(srv.Close)
	c := New(WithRetries(0))
	_, err := c.Fetch(t.Context(), source.Request{URL: srv.URL})
	require.Error(t, err)
	require.Equal(t, int64(maxRedirects), hops.Load())
	c.hc.CloseIdleConnections()
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	c := New(WithBackoff(100*time.Millisecond, time.Second))
	for attempt, want := range []time.Duration{100, 200, 400, 800, 1000, 1000, 1000} {
		want *= time.Millisecond
		for range 20 {
			d := c.backoff(attempt)
			require.GreaterOrEqual(t, d, want/2, "attempt %d", attempt)
			require.LessOrEqual(t, d, want, "attempt %d", attempt)
		}
	}
	require.Equal(t, time.Second, retryAfter("1"))
	require.Zero(t, retryAfter("soon"))
	require.Zero(t, retryAfter("-3"))
	require.InDelta(t, float64(10*time.Second), float64(retryAfter(time.Now().Add(10*time.Second).UTC().Format(http.TimeFormat))), float64(1500*time.Millisecond))
}

func toString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case error:
		return x.Error()
	default:
		return ""
	}
}
