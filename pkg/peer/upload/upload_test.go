package upload

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"golang.org/x/time/rate"

	"github.com/damselfly/damselfly/pkg/clusterauth"
	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testKeys is the cluster token of the servers under test.
var testKeys = clusterauth.MustParse("upload-test-cluster-token,upload-test-previous-token")

// member sends testKeys' token with every request, as a cluster member does.
func member(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = r.Clone(r.Context())
		testKeys.Set(r.Header)
		h.ServeHTTP(w, r)
	})
}

// memberTransport sends testKeys' token with every request.
type memberTransport struct{ base http.RoundTripper }

func (m memberTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	testKeys.Set(r.Header)
	return m.base.RoundTrip(r)
}

// Only members are served: a request without the cluster token, with a
// wrong one or with a malformed header gets 401 and a challenge, and no
// byte of the task, whatever the task; a previous token is still accepted
// while rotating; a server without keys serves nobody.
func TestClusterToken(t *testing.T) {
	t.Parallel()
	tasks, data := newFakeTasks(t)
	srv := httptest.NewServer(New(tasks, testKeys).Handler())
	t.Cleanup(srv.Close)
	closed := httptest.NewServer(New(tasks, clusterauth.Keys{}).Handler())
	t.Cleanup(closed.Close)
	tests := []struct {
		name, url, auth string
		status          int
	}{
		{"no token", srv.URL, "", http.StatusUnauthorized},
		{"wrong token", srv.URL, "Bearer upload-test-cluster-tokeX", http.StatusUnauthorized},
		{"token prefix", srv.URL, "Bearer upload-test-cluster", http.StatusUnauthorized},
		{"basic scheme", srv.URL, "Basic dXBsb2FkLXRlc3QtY2x1c3Rlci10b2tlbg==", http.StatusUnauthorized},
		{"bare token", srv.URL, "upload-test-cluster-token", http.StatusUnauthorized},
		{"empty bearer", srv.URL, "Bearer ", http.StatusUnauthorized},
		{"current token", srv.URL, "Bearer upload-test-cluster-token", http.StatusPartialContent},
		{"previous token", srv.URL, "Bearer upload-test-previous-token", http.StatusPartialContent},
		{"lower-case scheme", srv.URL, "bearer upload-test-cluster-token", http.StatusPartialContent},
		{"server without keys", closed.URL, "Bearer upload-test-cluster-token", http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for _, id := range []taskid.ID{idFull, taskid.ID("sha256:" + strings.Repeat("0", 64))} {
				req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, tt.url+Path(id), nil)
				require.NoError(t, err)
				req.Header.Set("Range", "bytes=0-99")
				if tt.auth != "" {
					req.Header.Set("Authorization", tt.auth)
				}
				resp, err := http.DefaultClient.Do(req)
				require.NoError(t, err)
				body, err := io.ReadAll(resp.Body)
				require.NoError(t, err)
				require.NoError(t, resp.Body.Close())
				if tt.status == http.StatusUnauthorized {
					require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "task %s", id)
					require.Equal(t, clusterauth.Challenge, resp.Header.Get("WWW-Authenticate"))
					require.NotContains(t, string(body), string(data[:8]))
					continue
				}
				if id == idFull {
					require.Equal(t, tt.status, resp.StatusCode)
					require.Equal(t, data[:100], body)
				} else {
					require.Equal(t, http.StatusNotFound, resp.StatusCode)
				}
			}
		})
	}
}

// fakeTask serves data of which only the verified spans may be read.
type fakeTask struct {
	data     []byte
	size     int64
	verified [][2]int64 // [start, end) spans
	readErr  error      // returned by ReadAt when set
	failFrom int64      // when > 0, ReadAt fails at and after this offset
	closes   *atomic.Int64
}

func (t *fakeTask) ReadAt(p []byte, off int64) (int, error) {
	if t.readErr != nil {
		return 0, t.readErr
	}
	if t.failFrom > 0 && off+int64(len(p)) > t.failFrom {
		return 0, errors.New("disk gone")
	}
	if !t.Verified(off, int64(len(p))) {
		return 0, fmt.Errorf("read of unverified bytes [%d, %d)", off, off+int64(len(p)))
	}
	return bytes.NewReader(t.data).ReadAt(p, off)
}

func (t *fakeTask) Size() int64 { return t.size }

func (t *fakeTask) Verified(off, n int64) bool {
	for _, v := range t.verified {
		if off >= v[0] && off+n <= v[1] {
			return true
		}
	}
	return false
}

func (t *fakeTask) Close() error {
	t.closes.Add(1)
	return nil
}

// fakeTasks is a fixed set of tasks; it counts opens and closes.
type fakeTasks struct {
	tasks  map[taskid.ID]fakeTask
	opens  atomic.Int64
	closes atomic.Int64
}

func (f *fakeTasks) Open(ctx context.Context, id taskid.ID) (Task, error) {
	t, ok := f.tasks[id]
	if !ok {
		return nil, fmt.Errorf("task %s: %w", id, ErrNotFound)
	}
	f.opens.Add(1)
	t.closes = &f.closes
	return &t, nil
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

var (
	idFull     = taskid.ID(strings.Repeat("a", 64))
	idPartial  = taskid.ID("sha256:" + strings.Repeat("b", 64))
	idUnknown  = taskid.ID(strings.Repeat("c", 64))
	idEmpty    = taskid.ID(strings.Repeat("d", 64))
	idBroken   = taskid.ID(strings.Repeat("e", 64))
	idMissing  = taskid.ID(strings.Repeat("f", 64))
	sizeFull   = int64(1 << 20)
	sizePartly = int64(3000)
)

func newFakeTasks(t *testing.T) (*fakeTasks, []byte) {
	data := randomBytes(t, int(sizeFull))
	return &fakeTasks{tasks: map[taskid.ID]fakeTask{
		idFull:    {data: data, size: sizeFull, verified: [][2]int64{{0, sizeFull}}},
		idPartial: {data: data[:sizePartly], size: sizePartly, verified: [][2]int64{{0, 1000}, {2000, 3000}}},
		idUnknown: {data: data[:2000], size: -1, verified: [][2]int64{{1000, 2000}}},
		idEmpty:   {data: nil, size: 0, verified: [][2]int64{{0, 0}}},
		idBroken:  {data: data, size: sizeFull, verified: [][2]int64{{0, sizeFull}}, readErr: errors.New("disk on fire")},
	}}, data
}

func TestServe(t *testing.T) {
	t.Parallel()
	tasks, data := newFakeTasks(t)
	srv := httptest.NewServer(member(New(tasks, testKeys).Handler()))
	t.Cleanup(srv.Close)

	tests := []struct {
		name         string
		method       string
		path         string // default Path(task)
		task         taskid.ID
		rng          []string
		status       int
		body         []byte // nil: not checked
		bodyText     string
		contentRange string
	}{
		{name: "whole verified", task: idFull, status: 200, body: data},
		{name: "closed range", task: idFull, rng: []string{"bytes=100-199"}, status: 206, body: data[100:200], contentRange: "bytes 100-199/1048576"},
		{name: "open range", task: idFull, rng: []string{"bytes=1048000-"}, status: 206, body: data[1048000:], contentRange: "bytes 1048000-1048575/1048576"},
		{name: "suffix range", task: idFull, rng: []string{"bytes=-10"}, status: 206, body: data[sizeFull-10:], contentRange: "bytes 1048566-1048575/1048576"},
		{name: "range clamped", task: idFull, rng: []string{"bytes=1048570-99999999"}, status: 206, body: data[1048570:]},
		{name: "head", method: http.MethodHead, task: idFull, rng: []string{"bytes=0-9"}, status: 206, body: []byte{}, contentRange: "bytes 0-9/1048576"},
		{name: "verified piece of partial", task: idPartial, rng: []string{"bytes=2000-2999"}, status: 206, body: data[2000:3000]},
		{name: "range over gap", task: idPartial, rng: []string{"bytes=500-2500"}, status: 404, bodyText: "range not available"},
		{name: "range in gap", task: idPartial, rng: []string{"bytes=1000-1999"}, status: 404, bodyText: "range not available"},
		{name: "whole of partial", task: idPartial, status: 404, bodyText: "range not available"},
		{name: "unsatisfiable", task: idPartial, rng: []string{"bytes=3000-"}, status: 416, contentRange: "bytes */3000"},
		{name: "empty suffix", task: idPartial, rng: []string{"bytes=-0"}, status: 416, contentRange: "bytes */3000"},
		{name: "malformed", task: idFull, rng: []string{"bytes=x-y"}, status: 416, bodyText: "malformed range", contentRange: "bytes */1048576"},
		{name: "inverted", task: idFull, rng: []string{"bytes=9-1"}, status: 416, bodyText: "malformed range"},
		{name: "multi range", task: idFull, rng: []string{"bytes=0-1,4-5"}, status: 416, bodyText: "malformed range"},
		{name: "two range headers", task: idFull, rng: []string{"bytes=0-1", "bytes=4-5"}, status: 416},
		{name: "overflow", task: idFull, rng: []string{"bytes=99999999999999999999-"}, status: 416},
		{name: "unknown size closed range", task: idUnknown, rng: []string{"bytes=1000-1999"}, status: 206, body: data[1000:2000], contentRange: "bytes 1000-1999/*"},
		{name: "unknown size unverified", task: idUnknown, rng: []string{"bytes=0-999"}, status: 404},
		{name: "unknown size no range", task: idUnknown, status: 400, bodyText: "range required"},
		{name: "unknown size open range", task: idUnknown, rng: []string{"bytes=1000-"}, status: 416},
		{name: "empty content", task: idEmpty, status: 200, body: []byte{}},
		{name: "empty content range", task: idEmpty, rng: []string{"bytes=0-"}, status: 416, contentRange: "bytes */0"},
		{name: "unknown task", task: idMissing, status: 404, bodyText: "task not found"},
		{name: "read failure before any byte is 500", task: idBroken, rng: []string{"bytes=0-9"}, status: 500, bodyText: "internal error"},
		{name: "bad task id", path: RoutePrefix + "not-a-task", status: 400, bodyText: "invalid task id"},
		{name: "uppercase task id", path: RoutePrefix + strings.ToUpper(idFull.String()), status: 400},
		{name: "short digest", path: Path("sha256:abc"), status: 400},
		{name: "traversal encoded", path: RoutePrefix + "..%2F..%2Fetc%2Fpasswd", status: 400},
		{name: "traversal dotdot", path: RoutePrefix + "%2e%2e", status: 400},
		{name: "traversal nested", path: RoutePrefix + idFull.String() + "/..%2f" + idFull.String(), status: 404},
		{name: "post", method: http.MethodPost, task: idFull, status: 405},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			method := tt.method
			if method == "" {
				method = http.MethodGet
			}
			path := tt.path
			if path == "" {
				path = Path(tt.task)
			}
			req, err := http.NewRequestWithContext(t.Context(), method, srv.URL+path, nil)
			require.NoError(t, err)
			for _, r := range tt.rng {
				req.Header.Add("Range", r)
			}
			resp, err := srv.Client().Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			body, readErr := io.ReadAll(resp.Body)
			require.NoError(t, readErr)
			requireServed(t, resp, body, method, tt.status, tt.body, tt.contentRange)
			if tt.bodyText != "" {
				require.Equal(t, tt.bodyText, strings.TrimSpace(string(body)))
			}
		})
	}
	t.Cleanup(func() {
		require.Equal(t, tasks.opens.Load(), tasks.closes.Load(), "every opened task is closed")
	})
}

func TestReadFailureMidStreamCutsResponse(t *testing.T) {
	t.Parallel()
	data := randomBytes(t, int(sizeFull))
	tasks := &fakeTasks{tasks: map[taskid.ID]fakeTask{
		idFull: {data: data, size: sizeFull, verified: [][2]int64{{0, sizeFull}}, failFrom: 600 << 10},
	}}
	srv := httptest.NewServer(member(New(tasks, testKeys).Handler()))
	t.Cleanup(srv.Close)
	resp, err := srv.Client().Get(srv.URL + Path(idFull))
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	body, err := io.ReadAll(resp.Body)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF, "the client sees the cut, not a short clean body")
	require.Less(t, len(body), 600<<10)
	require.Equal(t, data[:len(body)], body)
}

func TestRateLimit(t *testing.T) {
	t.Parallel()
	tasks, data := newFakeTasks(t)
	// 64 KiB/s with an 8 KiB burst: 48 KiB takes at least (48-8)/64 s.
	lim := rate.NewLimiter(64<<10, 8<<10)
	srv := httptest.NewServer(member(New(tasks, testKeys, WithLimiter(lim)).Handler()))
	t.Cleanup(srv.Close)

	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+Path(idFull), nil)
	require.NoError(t, err)
	req.Header.Set("Range", httpx.FormatRange(0, 48<<10))
	start := time.Now()
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	elapsed := time.Since(start)
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	require.Equal(t, data[:48<<10], body)
	require.GreaterOrEqual(t, elapsed, 600*time.Millisecond, "40 KiB over the burst at 64 KiB/s")
	require.Less(t, elapsed, 2*time.Second)
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	tasks, _ := newFakeTasks(t)
	reg := prometheus.NewRegistry()
	srv := httptest.NewServer(member(New(tasks, testKeys, WithMetrics(httpx.NewMetrics(reg, "peer"))).Handler()))
	t.Cleanup(srv.Close)
	for _, id := range []taskid.ID{idFull, idMissing} {
		resp, err := srv.Client().Get(srv.URL + Path(id))
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		require.NoError(t, resp.Body.Close())
	}
	mfs, err := reg.Gather()
	require.NoError(t, err)
	codes := map[string]float64{}
	var sent float64
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch mf.GetName() {
			case "peer_http_requests_total":
				for _, l := range m.GetLabel() {
					if l.GetName() == "code" {
						codes[l.GetValue()] += m.GetCounter().GetValue()
					}
				}
			case "peer_http_response_bytes_total":
				sent += m.GetCounter().GetValue()
			}
		}
	}
	require.Equal(t, map[string]float64{"200": 1, "404": 1}, codes)
	require.GreaterOrEqual(t, sent, float64(sizeFull))
}

func TestRun(t *testing.T) {
	t.Parallel()
	tasks, data := newFakeTasks(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	s := New(tasks, testKeys)
	var wg sync.WaitGroup
	var runErr error
	wg.Go(func() { runErr = s.Run(ctx, ln) })

	client := &http.Client{Transport: memberTransport{&http.Transport{}}}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+ln.Addr().String()+Path(idPartial), nil)
	require.NoError(t, err)
	req.Header.Set("Range", "bytes=0-999")
	resp, err := client.Do(req)
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, data[:1000], body)
	client.CloseIdleConnections()

	cancel()
	wg.Wait()
	require.NoError(t, runErr)
	_, err = net.DialTimeout("tcp", ln.Addr().String(), time.Second)
	require.Error(t, err, "listener closed after Run returns")
}

func TestRunListenerError(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	require.NoError(t, ln.Close())
	tasks, _ := newFakeTasks(t)
	require.Error(t, New(tasks, testKeys).Run(t.Context(), ln))
}

// The start callback hears of every GET answered with content that names
// its requester, with the range served, and of nothing else: not a HEAD, not
// a refusal, not an anonymous request.
func TestTransferStart(t *testing.T) {
	t.Parallel()
	tasks, _ := newFakeTasks(t)
	type start struct {
		task   taskid.ID
		peer   string
		off, n int64
	}
	var mu sync.Mutex
	var got []start
	srv := httptest.NewServer(member(New(tasks, testKeys, WithTransferStart(func(_ context.Context, task taskid.ID, peer string, off, n int64) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, start{task, peer, off, n})
	})).Handler()))
	t.Cleanup(srv.Close)

	tests := []struct {
		name, method, peer, rng string
		task                    taskid.ID
		status                  int
		want                    []start
	}{
		{name: "named GET", method: http.MethodGet, task: idFull, peer: "p1", rng: "bytes=100-199", status: http.StatusPartialContent,
			want: []start{{idFull, "p1", 100, 100}}},
		{name: "anonymous GET", method: http.MethodGet, task: idFull, rng: "bytes=0-9", status: http.StatusPartialContent},
		{name: "HEAD", method: http.MethodHead, task: idFull, peer: "p1", rng: "bytes=0-9", status: http.StatusPartialContent},
		{name: "range not available", method: http.MethodGet, task: idPartial, peer: "p1", rng: "bytes=999-1001", status: http.StatusNotFound},
		{name: "peer ID too long", method: http.MethodGet, task: idFull, peer: strings.Repeat("x", 129), rng: "bytes=0-9", status: http.StatusPartialContent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mu.Lock()
			got = nil
			mu.Unlock()
			req, err := http.NewRequestWithContext(t.Context(), tt.method, srv.URL+Path(tt.task), nil)
			require.NoError(t, err)
			req.Header.Set("Range", tt.rng)
			if tt.peer != "" {
				req.Header.Set(schedapi.HeaderPeer, tt.peer)
			}
			resp, err := srv.Client().Do(req)
			require.NoError(t, err)
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			require.Equal(t, tt.status, resp.StatusCode)
			mu.Lock()
			defer mu.Unlock()
			require.Equal(t, tt.want, got)
		})
	}
}

// requireServed checks a response to method: its status; when want is set,
// its body and (but for HEAD) a matching Content-Length; when contentRange
// is set, its Content-Range; and that an error carries no content.
func requireServed(t *testing.T, resp *http.Response, body []byte, method string, status int, want []byte, contentRange string) {
	t.Helper()
	require.Equal(t, status, resp.StatusCode, "body: %.100s", body)
	if want != nil {
		require.Equal(t, want, body)
		if method != http.MethodHead {
			require.Equal(t, strconv.Itoa(len(want)), resp.Header.Get("Content-Length"))
		}
	}
	if contentRange != "" {
		require.Equal(t, contentRange, resp.Header.Get("Content-Range"))
	}
	if status >= 400 {
		require.Less(t, len(body), 100, "an error carries no content")
	}
}
