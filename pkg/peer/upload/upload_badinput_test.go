package upload

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// TestBadRangeAndPathMatrix covers the Range and path inputs TestServe
// leaves out: every one is a 2xx with the right bytes or the exact 4xx.
func TestBadRangeAndPathMatrix(t *testing.T) {
	t.Parallel()
	tasks, data := newFakeTasks(t)
	h := member(New(tasks, testKeys).Handler())
	tests := []struct {
		name, path, rng string
		status          int
		body            []byte
	}{
		{name: "first byte", rng: "bytes=0-0", status: 206, body: data[:1]},
		{name: "last byte", rng: "bytes=1048575-1048575", status: 206, body: data[sizeFull-1:]},
		{name: "suffix longer than content", rng: "bytes=-99999999", status: 206, body: data},
		{name: "open-ended from zero", rng: "bytes=0-", status: 206, body: data},
		{name: "start at the end", rng: "bytes=1048576-", status: 416},
		{name: "start beyond the end", rng: "bytes=2000000-3000000", status: 416},
		{name: "end overflow", rng: "bytes=0-99999999999999999999", status: 416},
		{name: "max int64 end", rng: "bytes=0-9223372036854775807", status: 206, body: data},
		{name: "suffix overflow", rng: "bytes=-99999999999999999999", status: 416},
		{name: "negative start", rng: "bytes=-5-10", status: 416},
		{name: "plus sign", rng: "bytes=+5-10", status: 416},
		{name: "hex", rng: "bytes=0x10-0x20", status: 416},
		{name: "empty spec", rng: "bytes=", status: 416},
		{name: "dash only", rng: "bytes=-", status: 416},
		{name: "no unit", rng: "0-10", status: 416},
		{name: "other unit", rng: "items=0-10", status: 416},
		{name: "upper case unit", rng: "BYTES=0-9", status: 206, body: data[:10]},
		{name: "whitespace", rng: " bytes = 0 - 9 ", status: 206, body: data[:10]},
		{name: "multi range same piece", rng: "bytes=0-1, 2-3", status: 416},
		{name: "garbage", rng: "\x00\xff garbage", status: 416},
		{name: "oversized range value", rng: "bytes=0-" + strings.Repeat("0", 200) + "1", status: 416},
		{name: "nul in task id", path: RoutePrefix + strings.Repeat("a", 63) + "%00", status: 400},
		{name: "absolute path as task", path: RoutePrefix + "%2Fetc%2Fpasswd", status: 400},
		{name: "digest traversal", path: RoutePrefix + "sha256:..%2F..%2F" + strings.Repeat("a", 58), status: 400},
		{name: "md5 task", path: RoutePrefix + "md5:" + strings.Repeat("a", 32), status: 400},
		{name: "too long task", path: RoutePrefix + strings.Repeat("a", 65), status: 400},
		{name: "empty task is no route", path: RoutePrefix, status: 404},
		{name: "backslash", path: RoutePrefix + "..%5C..%5Cetc", status: 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := tt.path
			if path == "" {
				path = Path(idFull)
			}
			req := httptest.NewRequest(http.MethodGet, path, nil)
			if tt.rng != "" {
				req.Header.Set("Range", tt.rng)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			require.Equal(t, tt.status, rec.Code, "body %.100q", rec.Body)
			if tt.body != nil {
				require.True(t, bytes.Equal(tt.body, rec.Body.Bytes()), "wrong bytes")
			}
			if tt.status == 416 {
				require.Equal(t, "bytes */"+strconv.FormatInt(sizeFull, 10), rec.Header().Get("Content-Range"))
			}
			if tt.status >= 400 {
				require.Less(t, rec.Body.Len(), 100, "an error carries no content")
			}
		})
	}
	require.Equal(t, tasks.opens.Load(), tasks.closes.Load(), "every opened task is closed")
}

// TestOversizedHeaders: the real server refuses header blocks over its
// limit with 431 and keeps serving.
func TestOversizedHeaders(t *testing.T) {
	t.Parallel()
	tasks, data := newFakeTasks(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	var runErr error
	wg.Go(func() { runErr = New(tasks, testKeys).Run(ctx, ln) })
	defer func() {
		cancel()
		wg.Wait()
		require.NoError(t, runErr)
	}()
	client := &http.Client{Transport: memberTransport{&http.Transport{}}}
	defer client.CloseIdleConnections()

	get := func(extra http.Header) (int, []byte) {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+ln.Addr().String()+Path(idFull), nil)
		require.NoError(t, err)
		maps.Copy(req.Header, extra)
		req.Header.Set("Range", "bytes=0-9")
		resp, err := client.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, b
	}
	status, _ := get(http.Header{"X-Big": {strings.Repeat("a", 64<<10)}})
	require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, status)
	many := http.Header{}
	for i := range 2000 {
		many.Set(fmt.Sprintf("X-H%d", i), "0123456789abcdef")
	}
	status, _ = get(many)
	require.Equal(t, http.StatusRequestHeaderFieldsTooLarge, status)
	status, body := get(nil)
	require.Equal(t, http.StatusPartialContent, status)
	require.Equal(t, data[:10], body)
}

// FuzzUploadRange: any Range header and task path gets the exact bytes
// asked for, or a 4xx without content; never a 5xx.
func FuzzUploadRange(f *testing.F) {
	for _, s := range [][2]string{
		{string(idFull), "bytes=0-0"}, {string(idFull), "bytes=-10"}, {string(idFull), "bytes=1048570-"}, {string(idPartial), "bytes=500-2500"},
		{string(idPartial), "bytes=2000-2999"}, {string(idUnknown), "bytes=1000-1999"}, {string(idUnknown), "bytes=1000-"}, {string(idEmpty), ""},
		{string(idEmpty), "bytes=0-"}, {string(idMissing), "bytes=0-1"}, {"..%2F..%2Fetc%2Fpasswd", "bytes=0-1"},
		{string(idFull), "bytes=0-1,2-3"}, {string(idFull), "bytes=99999999999999999999-"}, {string(idUnknown), ""},
	} {
		f.Add(s[0], s[1])
	}
	data := make([]byte, sizeFull)
	for i := range data {
		data[i] = byte(i * 7)
	}
	tasks := &fakeTasks{tasks: map[taskid.ID]fakeTask{
		idFull:    {data: data, size: sizeFull, verified: [][2]int64{{0, sizeFull}}},
		idPartial: {data: data[:sizePartly], size: sizePartly, verified: [][2]int64{{0, 1000}, {2000, 3000}}},
		idUnknown: {data: data[:2000], size: -1, verified: [][2]int64{{1000, 2000}}},
		idEmpty:   {data: nil, size: 0, verified: [][2]int64{{0, 0}}},
	}}
	h := member(New(tasks, testKeys).Handler())
	f.Fuzz(func(t *testing.T, task, rng string) {
		req, err := http.NewRequest(http.MethodGet, "http://peer"+RoutePrefix+task, nil)
		if err != nil {
			return
		}
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		switch {
		case rec.Code == http.StatusPartialContent:
			ft, ok := tasks.tasks[taskid.ID(req.URL.Path[len(RoutePrefix):])]
			if !ok {
				t.Fatalf("206 for unknown task %q", task)
			}
			r, total, err := httpx.ParseContentRange(rec.Header().Get("Content-Range"))
			if err != nil || total != ft.size || r.Length != int64(rec.Body.Len()) {
				t.Fatalf("task %q range %q: Content-Range %q (%v) for %d bytes", task, rng, rec.Header().Get("Content-Range"), err, rec.Body.Len())
			}
			if !ft.Verified(r.Start, r.Length) || !bytes.Equal(rec.Body.Bytes(), ft.data[r.Start:r.Start+r.Length]) {
				t.Fatalf("task %q range %q: wrong or unverified bytes at %+v", task, rng, r)
			}
		case rec.Code == http.StatusOK:
			ft := tasks.tasks[taskid.ID(req.URL.Path[len(RoutePrefix):])]
			if ft.size < 0 || !bytes.Equal(rec.Body.Bytes(), ft.data[:ft.size]) {
				t.Fatalf("task %q range %q: 200 with wrong bytes", task, rng)
			}
		case rec.Code == http.StatusTemporaryRedirect || rec.Code == http.StatusMovedPermanently:
			// net/http's ServeMux cleaning the path ("//", "/../").
			if rec.Header().Get("Location") == "" {
				t.Fatalf("task %q: redirect without Location", task)
			}
		case rec.Code >= 400 && rec.Code < 500:
			if rec.Body.Len() >= 100 {
				t.Fatalf("task %q range %q: %d carries %d bytes", task, rng, rec.Code, rec.Body.Len())
			}
		default:
			t.Fatalf("task %q range %q: status %d", task, rng, rec.Code)
		}
	})
}
