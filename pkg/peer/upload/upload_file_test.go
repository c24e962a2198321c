package upload

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/time/rate"

	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// fileTask is a FileTask over a file: FileRange hands out the file, ReadAt
// must not be used.
type fileTask struct {
	f        *os.File
	size     int64
	failFrom int64 // when > 0, FileRange fails for ranges reaching it
	decline  bool  // FileRange declines: the server reads with ReadAt
	ranges   *atomic.Int64
	reads    *atomic.Int64
	closes   *atomic.Int64
}

func (t *fileTask) ReadAt(p []byte, off int64) (int, error) {
	t.reads.Add(1)
	return t.f.ReadAt(p, off)
}

func (t *fileTask) Size() int64 { return t.size }

func (t *fileTask) Verified(off, n int64) bool { return off >= 0 && n > 0 && off+n <= t.size }

func (t *fileTask) Close() error {
	t.closes.Add(1)
	return t.f.Close()
}

func (t *fileTask) FileRange(off, n int64) (io.Reader, error) {
	if t.decline {
		return nil, nil
	}
	t.ranges.Add(1)
	if t.failFrom > 0 && off+n > t.failFrom {
		return nil, errors.New("piece failed its digest")
	}
	if _, err := t.f.Seek(off, io.SeekStart); err != nil {
		return nil, err
	}
	return &io.LimitedReader{R: t.f, N: n}, nil
}

// fileTasks opens a fresh file per request, as the CDN does.
type fileTasks struct {
	path     string
	failFrom int64
	decline  bool
	opens    atomic.Int64
	ranges   atomic.Int64
	reads    atomic.Int64
	closes   atomic.Int64
}

func (ts *fileTasks) Open(ctx context.Context, id taskid.ID) (Task, error) {
	if id != idFull {
		return nil, fmt.Errorf("task %s: %w", id, ErrNotFound)
	}
	f, err := os.Open(ts.path)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	ts.opens.Add(1)
	return &fileTask{f: f, size: fi.Size(), failFrom: ts.failFrom, decline: ts.decline, ranges: &ts.ranges, reads: &ts.reads, closes: &ts.closes}, nil
}

func newFileTasks(t *testing.T, size int) (*fileTasks, []byte) {
	t.Helper()
	data := randomBytes(t, size)
	path := filepath.Join(t.TempDir(), "blob")
	require.NoError(t, os.WriteFile(path, data, 0o600))
	return &fileTasks{path: path}, data
}

func getRange(t *testing.T, srv *httptest.Server, method string, rng ...string) (*http.Response, []byte, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, srv.URL+Path(idFull), nil)
	require.NoError(t, err)
	for _, r := range rng {
		req.Header.Add("Range", r)
	}
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

// A FileTask's bytes are sent from its file (FileRange, never ReadAt):
// exactly the range asked for, under the same Range and 416 rules as
// ReadAt's, in steps of at most fileChunk, each file opened closed.
func TestServeFromFile(t *testing.T) {
	t.Parallel()
	size := fileChunk*2 + 12345
	tasks, data := newFileTasks(t, size)
	srv := httptest.NewServer(member(New(tasks, testKeys).Handler()))
	t.Cleanup(srv.Close)
	sz := int64(size)
	tests := []struct {
		name         string
		method       string
		rng          []string
		status       int
		body         []byte
		contentRange string
		steps        int64
	}{
		{name: "whole", status: 200, body: data, steps: 3},
		{name: "closed range", rng: []string{"bytes=100-199"}, status: 206, body: data[100:200], contentRange: fmt.Sprintf("bytes 100-199/%d", sz), steps: 1},
		{name: "across steps", rng: []string{fmt.Sprintf("bytes=%d-%d", fileChunk-10, fileChunk*2+9)}, status: 206,
			body: data[fileChunk-10 : fileChunk*2+10], steps: 2},
		{name: "open range", rng: []string{fmt.Sprintf("bytes=%d-", sz-1000)}, status: 206, body: data[sz-1000:], contentRange: fmt.Sprintf("bytes %d-%d/%d", sz-1000, sz-1, sz), steps: 1},
		{name: "suffix range", rng: []string{"bytes=-10"}, status: 206, body: data[sz-10:], steps: 1},
		{name: "clamped", rng: []string{fmt.Sprintf("bytes=%d-99999999999", sz-7)}, status: 206, body: data[sz-7:], steps: 1},
		{name: "head", method: http.MethodHead, rng: []string{"bytes=0-9"}, status: 206, body: []byte{}, contentRange: fmt.Sprintf("bytes 0-9/%d", sz)},
		{name: "unsatisfiable", rng: []string{fmt.Sprintf("bytes=%d-", sz)}, status: 416, contentRange: fmt.Sprintf("bytes */%d", sz)},
		{name: "empty suffix", rng: []string{"bytes=-0"}, status: 416, contentRange: fmt.Sprintf("bytes */%d", sz)},
		{name: "malformed", rng: []string{"bytes=x-y"}, status: 416},
		{name: "multi range", rng: []string{"bytes=0-1,4-5"}, status: 416},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = http.MethodGet
			}
			before := tasks.ranges.Load()
			resp, body, err := getRange(t, srv, method, tt.rng...)
			require.NoError(t, err)
			requireServed(t, resp, body, method, tt.status, tt.body, tt.contentRange)
			require.Equal(t, tt.steps, tasks.ranges.Load()-before, "file ranges taken")
		})
	}
	require.Zero(t, tasks.reads.Load(), "nothing read with ReadAt")
	require.Eventually(t, func() bool { return tasks.opens.Load() == tasks.closes.Load() }, time.Second, time.Millisecond,
		"every opened task is closed")
}

// A range the FileTask cannot check is a clean 500 when it is the first
// step, and a cut response later; one it declines is read with ReadAt.
func TestServeFromFileFailures(t *testing.T) {
	t.Parallel()
	size := fileChunk + 5000
	tasks, data := newFileTasks(t, size)
	tasks.failFrom = 100
	srv := httptest.NewServer(member(New(tasks, testKeys).Handler()))
	t.Cleanup(srv.Close)
	resp, body, err := getRange(t, srv, http.MethodGet, "bytes=0-199")
	require.NoError(t, err)
	require.Equal(t, http.StatusInternalServerError, resp.StatusCode)
	require.NotContains(t, string(body), string(data[:16]))

	cut, _ := newFileTasks(t, 1)
	cut.path, cut.failFrom = tasks.path, fileChunk+1
	srv2 := httptest.NewServer(member(New(cut, testKeys).Handler()))
	t.Cleanup(srv2.Close)
	resp, body, err = getRange(t, srv2, http.MethodGet)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF, "the client sees the cut, not a short clean body")
	require.Equal(t, data[:len(body)], body)
	require.LessOrEqual(t, len(body), fileChunk)

	declined, _ := newFileTasks(t, 1)
	declined.path, declined.decline = tasks.path, true
	srv3 := httptest.NewServer(member(New(declined, testKeys).Handler()))
	t.Cleanup(srv3.Close)
	resp, body, err = getRange(t, srv3, http.MethodGet, "bytes=10-99")
	require.NoError(t, err)
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	require.Equal(t, data[10:100], body)
	require.Positive(t, declined.reads.Load())
}

// The limiter paces a FileTask's bytes as it paces reads.
func TestServeFromFileRateLimit(t *testing.T) {
	t.Parallel()
	tasks, data := newFileTasks(t, 1<<20)
	// 64 KiB/s with an 8 KiB burst: 48 KiB takes at least (48-8)/64 s.
	lim := rate.NewLimiter(64<<10, 8<<10)
	srv := httptest.NewServer(member(New(tasks, testKeys, WithLimiter(lim)).Handler()))
	t.Cleanup(srv.Close)
	start := time.Now()
	resp, body, err := getRange(t, srv, http.MethodGet, httpx.FormatRange(0, 48<<10))
	require.NoError(t, err)
	elapsed := time.Since(start)
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	require.Equal(t, data[:48<<10], body)
	require.GreaterOrEqual(t, elapsed, 600*time.Millisecond, "40 KiB over the burst at 64 KiB/s")
	require.Less(t, elapsed, 2*time.Second)
	require.Positive(t, tasks.ranges.Load())
}
