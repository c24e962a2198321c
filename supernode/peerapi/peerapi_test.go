package peerapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/damselfly/damselfly/pkg/clusterauth"
	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
	"github.com/damselfly/damselfly/supernode/cdn"
	"github.com/damselfly/damselfly/supernode/scheduler"
	"github.com/damselfly/damselfly/supernode/task"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testKeys is the cluster token of the servers under test.
var testKeys = clusterauth.MustParse("peerapi-test-cluster-token-0123456789")

// Outsiders get nothing: every route, without the cluster token or with a
// wrong one, is answered 401 UNAUTHENTICATED with a challenge, and nothing
// reaches the scheduler or the CDN (no task created, no source fetched).
func TestClusterTokenRequired(t *testing.T) {
	t.Parallel()
	f := &fake{}
	srv := newServer(t, f)
	id := "sha256:" + strings.Repeat("a", 64)
	routes := []struct {
		method, path string
		body         any
	}{
		{http.MethodPost, schedapi.RegisterPath(), schedapi.RegisterRequest{Peer: goodPeer, URL: "http://10.0.0.1/secret", Digest: id}},
		{http.MethodGet, schedapi.PiecesPath(id, goodPeer.ID) + "?max=64&wait=0s", nil},
		{http.MethodPost, schedapi.ReportPath(id, goodPeer.ID), schedapi.ReportRequest{Results: []schedapi.PieceResult{{Piece: 0, From: "seed", Reason: schedapi.ReasonCorrupt}}}},
		{http.MethodDelete, schedapi.LeavePath(id, goodPeer.ID), nil},
		{http.MethodPut, schedapi.WantPath(id, goodPeer.ID) + "?want=0-3", nil},
		{http.MethodPost, schedapi.HeartbeatPath(goodPeer.ID), schedapi.HeartbeatRequest{Addr: goodPeer.Addr, Tasks: []string{id}}},
		{http.MethodGet, "/api/peer/v1/nothing-here", nil},
	}
	for _, auth := range []string{"", "Bearer wrong-token-0123456789", "Bearer " + strings.Repeat("x", 5000)} {
		for _, rt := range routes {
			var body io.Reader
			if rt.body != nil {
				body = jsonBody(t, rt.body)
			}
			req, err := http.NewRequestWithContext(t.Context(), rt.method, srv.URL+rt.path, body)
			require.NoError(t, err)
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			resp, err := srv.Client().Do(req)
			require.NoError(t, err)
			b, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			require.NoError(t, resp.Body.Close())
			require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "%s %s", rt.method, rt.path)
			require.Equal(t, clusterauth.Challenge, resp.Header.Get("WWW-Authenticate"))
			var e schedapi.Error
			require.NoError(t, json.Unmarshal(b, &e))
			require.Equal(t, schedapi.CodeUnauthenticated, e.Code)
		}
	}
	require.Zero(t, f.calls(), "nothing reached the scheduler or the CDN")
}

// fake records calls and answers with canned results.
type fake struct {
	mu      sync.Mutex
	ensured []cdn.Request
	joined  []joinCall
	polls   []pollCall
	// wantUpdates are the SetWant calls.
	wantUpdates []pollCall
	reports     [][]schedapi.PieceResult
	info        schedapi.TaskInfo // Ensure's answer
	err         error             // returned by every scheduler call when set
	pollWait    bool              // Poll waits for ctx like the real one
	admitErr    error             // returned by Admit when set
}

func (f *fake) Admit(ctx context.Context, taskID taskid.ID, peerID string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.admitErr
}

type joinCall struct {
	task taskid.ID
	peer schedapi.Peer
	have *piece.Set
}

type pollCall struct {
	task     taskid.ID
	peer     string
	max      int
	deadline time.Duration
	want     schedapi.Want
}

func (f *fake) Ensure(ctx context.Context, req cdn.Request) (schedapi.TaskInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ensured = append(f.ensured, req)
	info := f.info
	info.TaskID = req.TaskID.String()
	return info, nil
}

func (f *fake) Join(ctx context.Context, taskID taskid.ID, p schedapi.Peer, have *piece.Set) (schedapi.TaskInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.joined = append(f.joined, joinCall{taskID, p, have})
	if f.err != nil {
		return schedapi.TaskInfo{}, f.err
	}
	info := f.info
	info.TaskID = taskID.String()
	return info, nil
}

func (f *fake) SetWant(ctx context.Context, taskID taskid.ID, peerID string, max int, want schedapi.Want) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.wantUpdates = append(f.wantUpdates, pollCall{task: taskID, peer: peerID, max: max, want: want})
	return f.err
}

func (f *fake) PollWant(ctx context.Context, taskID taskid.ID, peerID string, max int, want schedapi.Want) (schedapi.PiecesResponse, error) {
	dl, _ := ctx.Deadline()
	f.mu.Lock()
	f.polls = append(f.polls, pollCall{taskID, peerID, max, time.Until(dl).Round(time.Second), want})
	err, wait := f.err, f.pollWait
	f.mu.Unlock()
	if err != nil {
		return schedapi.PiecesResponse{}, err
	}
	if wait {
		<-ctx.Done()
	}
	return schedapi.PiecesResponse{TaskInfo: schedapi.TaskInfo{TaskID: taskID.String(), State: schedapi.TaskRunning}}, nil
}

func (f *fake) Report(ctx context.Context, taskID taskid.ID, peerID string, results []schedapi.PieceResult) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reports = append(f.reports, results)
	return f.err
}

func (f *fake) Leave(ctx context.Context, taskID taskid.ID, peerID string) error { return f.err }

func (f *fake) Heartbeat(ctx context.Context, peerID, addr string, tasks []taskid.ID) ([]taskid.ID, error) {
	if f.err != nil {
		return nil, f.err
	}
	return tasks[:min(1, len(tasks))], nil
}

func (f *fake) calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.ensured) + len(f.joined) + len(f.polls) + len(f.reports)
}

func newServer(t *testing.T, f *fake) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(New(stitched{f}, f, testKeys).Handler())
	t.Cleanup(srv.Close)
	return srv
}

func do(t *testing.T, srv *httptest.Server, method, path string, body io.Reader) (int, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, srv.URL+path, body)
	require.NoError(t, err)
	testKeys.Set(req.Header)
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, b
}

func jsonBody(t *testing.T, v any) io.Reader {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return bytes.NewReader(b)
}

// testMagnet is a magnet link naming trackers, one with a passkey.
const testMagnet = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&dn=set" +
	"&tr=https://tracker.test/s3cret/announce&tr=udp://open.test:1337&x.pe=10.0.0.1:6881"

var (
	goodTask = "sha256:" + strings.Repeat("ab", 32)
	goodPeer = schedapi.Peer{ID: "peer-1", Addr: "127.0.0.1:65002"}
)

func TestBadInputIs4xx(t *testing.T) {
	t.Parallel()
	good := schedapi.RegisterRequest{Peer: goodPeer, URL: "http://127.0.0.1:1/blob"}
	with := func(fn func(r *schedapi.RegisterRequest)) schedapi.RegisterRequest {
		r := good
		fn(&r)
		return r
	}
	pieces := schedapi.PiecesPath(goodTask, goodPeer.ID)
	tests := []struct {
		name   string
		method string
		path   string
		body   io.Reader
		status int
	}{
		{"garbage json", http.MethodPost, schedapi.RegisterPath(), strings.NewReader("{not json"), 400},
		{"trailing data", http.MethodPost, schedapi.RegisterPath(), strings.NewReader(`{"url":"x"} {}`), 400},
		{"empty body", http.MethodPost, schedapi.RegisterPath(), strings.NewReader(""), 400},
		{"oversized body", http.MethodPost, schedapi.RegisterPath(), strings.NewReader(`{"url":"` + strings.Repeat("a", schedapi.MaxBodyBytes+10) + `"}`), 413},
		{"bad peer id", http.MethodPost, schedapi.RegisterPath(), jsonBody(t, with(func(r *schedapi.RegisterRequest) { r.Peer.ID = "../etc" })), 400},
		{"empty peer id", http.MethodPost, schedapi.RegisterPath(), jsonBody(t, with(func(r *schedapi.RegisterRequest) { r.Peer.ID = "" })), 400},
		{"long peer id", http.MethodPost, schedapi.RegisterPath(), jsonBody(t, with(func(r *schedapi.RegisterRequest) { r.Peer.ID = strings.Repeat("p", 129) })), 400},
		{"addr without port", http.MethodPost, schedapi.RegisterPath(), jsonBody(t, with(func(r *schedapi.RegisterRequest) { r.Peer.Addr = "127.0.0.1" })), 400},
		{"negative download rate", http.MethodPost, schedapi.RegisterPath(), jsonBody(t, with(func(r *schedapi.RegisterRequest) { r.Peer.DownloadRate = -1 })), 400},
		{"addr bad port", http.MethodPost, schedapi.RegisterPath(), jsonBody(t, with(func(r *schedapi.RegisterRequest) { r.Peer.Addr = "h:99999" })), 400},
		{"file url", http.MethodPost, schedapi.RegisterPath(), jsonBody(t, with(func(r *schedapi.RegisterRequest) { r.URL = "file:///etc/passwd" })), 400},
		{"ftp url", http.MethodPost, schedapi.RegisterPath(), jsonBody(t, with(func(r *schedapi.RegisterRequest) { r.URL = "ftp://h/x" })), 400},
		{"url without host", http.MethodPost, schedapi.RegisterPath(), jsonBody(t, with(func(r *schedapi.RegisterRequest) { r.URL = "http:///x" })), 400},
		{"file on an http url", http.MethodPost, schedapi.RegisterPath(), jsonBody(t, with(func(r *schedapi.RegisterRequest) { r.File = "blob" })), 400},
		{"file on an http url with a digest", http.MethodPost, schedapi.RegisterPath(), jsonBody(t, with(func(r *schedapi.RegisterRequest) { r.File, r.Digest = "blob", goodTask })), 400},
		{"magnet without info-hash", http.MethodPost, schedapi.RegisterPath(), jsonBody(t, with(func(r *schedapi.RegisterRequest) { r.URL = "magnet:?dn=x&tr=https://t.test/a" })), 400},
		{"magnet short info-hash", http.MethodPost, schedapi.RegisterPath(), jsonBody(t, with(func(r *schedapi.RegisterRequest) { r.URL = "magnet:?xt=urn:btih:abc" })), 400},
		{"torrent over ftp", http.MethodPost, schedapi.RegisterPath(), jsonBody(t, with(func(r *schedapi.RegisterRequest) { r.URL = "torrent+ftp://h/x.torrent" })), 400},
		{"torrent file dot dot", http.MethodPost, schedapi.RegisterPath(), jsonBody(t, with(func(r *schedapi.RegisterRequest) { r.URL, r.File = testMagnet, "../x" })), 400},
		{"torrent file absolute", http.MethodPost, schedapi.RegisterPath(), jsonBody(t, with(func(r *schedapi.RegisterRequest) { r.URL, r.File = testMagnet, "/x" })), 400},
		{"md5 digest", http.MethodPost, schedapi.RegisterPath(), jsonBody(t, with(func(r *schedapi.RegisterRequest) { r.Digest = "md5:" + strings.Repeat("a", 32) })), 400},
		{"short sha256 digest", http.MethodPost, schedapi.RegisterPath(), jsonBody(t, with(func(r *schedapi.RegisterRequest) { r.Digest = "sha256:abc" })), 400},
		{"header injection", http.MethodPost, schedapi.RegisterPath(), jsonBody(t, with(func(r *schedapi.RegisterRequest) { r.Header = http.Header{"X": {"a\r\nB: c"}} })), 400},
		{"bad header name", http.MethodPost, schedapi.RegisterPath(), jsonBody(t, with(func(r *schedapi.RegisterRequest) { r.Header = http.Header{"A B": {"c"}} })), 400},
		{"negative piece size", http.MethodPost, schedapi.RegisterPath(), jsonBody(t, with(func(r *schedapi.RegisterRequest) { r.PieceSize = -1 })), 400},
		{"bad have set", http.MethodPost, schedapi.RegisterPath(), strings.NewReader(`{"peer":{"id":"p","addr":"h:1"},"url":"http://h/x","have":"***"}`), 400},
		{"bad task id", http.MethodGet, schedapi.PiecesPath("sha256:xyz", "p"), nil, 400},
		{"uppercase task id", http.MethodGet, schedapi.PiecesPath(strings.Repeat("A", 64), "p"), nil, 400},
		{"bad path peer id", http.MethodGet, schedapi.PiecesPath(goodTask, "p%20q"), nil, 400},
		{"bad wait", http.MethodGet, pieces + "?wait=soon", nil, 400},
		{"negative wait", http.MethodGet, pieces + "?wait=-1s", nil, 400},
		{"bad max", http.MethodGet, pieces + "?max=lots", nil, 400},
		{"zero max", http.MethodGet, pieces + "?max=0", nil, 400},
		{"bad want", http.MethodGet, pieces + "?want=5-3", nil, 400},
		{"want not ascending", http.MethodGet, pieces + "?want=5,3", nil, 400},
		{"want too many", http.MethodGet, pieces + "?want=0-1000", nil, 400},
		{"bad bg", http.MethodGet, pieces + "?bg=-1", nil, 400},
		{"report garbage", http.MethodPost, schedapi.ReportPath(goodTask, "p"), strings.NewReader("[]"), 400},
		{"report negative piece", http.MethodPost, schedapi.ReportPath(goodTask, "p"), jsonBody(t, schedapi.ReportRequest{Results: []schedapi.PieceResult{{Piece: -1, From: "q", OK: true}}}), 400},
		{"report bad from", http.MethodPost, schedapi.ReportPath(goodTask, "p"), jsonBody(t, schedapi.ReportRequest{Results: []schedapi.PieceResult{{Piece: 1, From: "", OK: true}}}), 400},
		{"report bad task", http.MethodPost, schedapi.ReportPath("nope", "p"), jsonBody(t, schedapi.ReportRequest{}), 400},
		{"leave bad task", http.MethodDelete, schedapi.LeavePath("nope", "p"), nil, 400},
		{"heartbeat bad addr", http.MethodPost, schedapi.HeartbeatPath("p"), jsonBody(t, schedapi.HeartbeatRequest{Addr: "nope"}), 400},
		{"heartbeat bad task", http.MethodPost, schedapi.HeartbeatPath("p"), jsonBody(t, schedapi.HeartbeatRequest{Tasks: []string{"../x"}}), 400},
		{"heartbeat bad peer", http.MethodPost, schedapi.HeartbeatPath("p!"), jsonBody(t, schedapi.HeartbeatRequest{}), 400},
		{"unknown route", http.MethodGet, "/api/peer/v1/nothing", nil, 404},
		{"wrong method", http.MethodGet, schedapi.RegisterPath(), nil, 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := &fake{}
			srv := newServer(t, f)
			status, body := do(t, srv, tt.method, tt.path, tt.body)
			require.Equal(t, tt.status, status, string(body))
			var e schedapi.Error
			require.NoError(t, json.Unmarshal(body, &e), string(body))
			require.Equal(t, schedapi.CodeInvalid, e.Code)
			require.NotEmpty(t, e.Message)
			require.Zero(t, f.calls(), "nothing reaches the scheduler or the CDN")
		})
	}
}

func TestRegister(t *testing.T) {
	t.Parallel()
	d := digest.FromString("layer")
	have := piece.NewSet(4)
	have.Add(0)
	have.Add(2)
	urlTask, err := taskid.ForURL("http://h/x?b=1&sig=zzz", []string{"sig"}, "v1")
	require.NoError(t, err)
	magnetTask, err := taskid.ForTorrent(testMagnet, "set/b.iso", "")
	require.NoError(t, err)
	torrentTask, err := taskid.ForTorrent("torrent+https://files.test/set.torrent", "", "")
	require.NoError(t, err)
	tests := []struct {
		name     string
		req      schedapi.RegisterRequest
		info     schedapi.TaskInfo
		wantTask string
		wantJoin bool
		wantHave []int
	}{
		{
			name:     "by digest",
			req:      schedapi.RegisterRequest{Peer: goodPeer, URL: "https://h/v2/x/blobs/" + d.String(), Digest: d.String(), Header: http.Header{"Authorization": {"Bearer t"}}},
			info:     schedapi.TaskInfo{State: schedapi.TaskRunning, PieceSize: piece.DefaultSize},
			wantTask: d.String(), wantJoin: true,
		},
		{
			name:     "by url with filter and identifier",
			req:      schedapi.RegisterRequest{Peer: goodPeer, URL: "http://h/x?sig=abc&b=1", Filter: []string{"sig"}, Identifier: "v1"},
			info:     schedapi.TaskInfo{State: schedapi.TaskRunning, PieceSize: piece.DefaultSize},
			wantTask: urlTask.String(), wantJoin: true,
		},
		{
			name:     "magnet link and file",
			req:      schedapi.RegisterRequest{Peer: goodPeer, URL: testMagnet, File: "set/b.iso"},
			info:     schedapi.TaskInfo{State: schedapi.TaskRunning, PieceSize: piece.DefaultSize},
			wantTask: magnetTask.String(), wantJoin: true,
		},
		{
			name:     "torrent file url",
			req:      schedapi.RegisterRequest{Peer: goodPeer, URL: "TORRENT+HTTPS://Files.test:443/set.torrent"},
			info:     schedapi.TaskInfo{State: schedapi.TaskRunning, PieceSize: piece.DefaultSize},
			wantTask: torrentTask.String(), wantJoin: true,
		},
		{
			name:     "multi-file torrent without a file fails with its list",
			req:      schedapi.RegisterRequest{Peer: goodPeer, URL: testMagnet},
			info:     schedapi.TaskInfo{State: schedapi.TaskFailed, Error: "torrent has 2 files, name one: set/a.iso, set/b.iso"},
			wantTask: mustTorrent(t, testMagnet, ""),
		},
		{
			name:     "have with matching piece size",
			req:      schedapi.RegisterRequest{Peer: goodPeer, URL: "http://h/x", Digest: d.String(), Have: have, PieceSize: piece.DefaultSize},
			info:     schedapi.TaskInfo{State: schedapi.TaskSucceeded, PieceSize: piece.DefaultSize},
			wantTask: d.String(), wantJoin: true, wantHave: []int{0, 2},
		},
		{
			name:     "have with another piece size is dropped",
			req:      schedapi.RegisterRequest{Peer: goodPeer, URL: "http://h/x", Digest: d.String(), Have: have, PieceSize: 1 << 20},
			info:     schedapi.TaskInfo{State: schedapi.TaskRunning, PieceSize: piece.DefaultSize},
			wantTask: d.String(), wantJoin: true,
		},
		{
			name:     "failed task is answered without joining",
			req:      schedapi.RegisterRequest{Peer: goodPeer, URL: "http://h/x", Digest: d.String()},
			info:     schedapi.TaskInfo{State: schedapi.TaskFailed, Error: "source answered 404 Not Found"},
			wantTask: d.String(),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := &fake{info: tt.info}
			srv := newServer(t, f)
			status, body := do(t, srv, http.MethodPost, schedapi.RegisterPath(), jsonBody(t, tt.req))
			require.Equal(t, http.StatusOK, status, string(body))
			var resp schedapi.RegisterResponse
			require.NoError(t, json.Unmarshal(body, &resp))
			require.Equal(t, tt.wantTask, resp.TaskID)
			require.Equal(t, tt.info.State, resp.State)
			require.Equal(t, tt.info.Error, resp.Error)

			require.Len(t, f.ensured, 1)
			require.Equal(t, tt.wantTask, f.ensured[0].TaskID.String())
			require.Equal(t, tt.req.URL, f.ensured[0].URL)
			require.Equal(t, tt.req.File, f.ensured[0].File)
			require.Equal(t, tt.req.Header, f.ensured[0].Header)
			require.Equal(t, digest.Digest(tt.req.Digest), f.ensured[0].Digest)
			if !tt.wantJoin {
				require.Empty(t, f.joined)
				return
			}
			require.Len(t, f.joined, 1)
			require.Equal(t, goodPeer, f.joined[0].peer)
			if tt.wantHave == nil {
				require.Nil(t, f.joined[0].have)
			} else {
				require.Equal(t, tt.wantHave, f.joined[0].have.Indices())
			}
		})
	}
}

func mustTorrent(t *testing.T, link, file string) string {
	t.Helper()
	id, err := taskid.ForTorrent(link, file, "")
	require.NoError(t, err)
	return id.String()
}

func TestErrorMapping(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		err    error
		status int
		code   schedapi.ErrorCode
	}{
		{"task not found", fmt.Errorf("poll: %w", scheduler.ErrTaskNotFound), 404, schedapi.CodeTaskNotFound},
		{"peer not found", fmt.Errorf("poll: %w", scheduler.ErrPeerNotFound), 404, schedapi.CodePeerNotFound},
		{"invalid", fmt.Errorf("report: %w", scheduler.ErrInvalid), 400, schedapi.CodeInvalid},
		{"closed", scheduler.ErrClosed, 503, schedapi.CodeUnavailable},
		{"anything else", errors.New("disk on fire at /secret/path"), 500, schedapi.CodeInternal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := &fake{err: tt.err}
			srv := newServer(t, f)
			for _, c := range []struct {
				method, path string
				body         any
			}{
				{http.MethodGet, schedapi.PiecesPath(goodTask, "p"), nil},
				{http.MethodPost, schedapi.ReportPath(goodTask, "p"), schedapi.ReportRequest{Results: []schedapi.PieceResult{{Piece: 0, From: "q", OK: true}}}},
				{http.MethodDelete, schedapi.LeavePath(goodTask, "p"), nil},
				{http.MethodPost, schedapi.HeartbeatPath("p"), schedapi.HeartbeatRequest{}},
			} {
				var body io.Reader
				if c.body != nil {
					body = jsonBody(t, c.body)
				}
				status, b := do(t, srv, c.method, c.path, body)
				require.Equal(t, tt.status, status, "%s %s: %s", c.method, c.path, b)
				var e schedapi.Error
				require.NoError(t, json.Unmarshal(b, &e))
				require.Equal(t, tt.code, e.Code)
				if tt.status == 500 {
					require.Equal(t, "internal error", e.Message, "internal details are not shown")
				}
			}
		})
	}
}

func TestPieces(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		query    string
		wantMax  int
		wantWait time.Duration
		want     schedapi.Want
	}{
		{"defaults", "", 0, DefaultWait, schedapi.NoWant},
		{"explicit", "?wait=2s&max=5", 5, 2 * time.Second, schedapi.NoWant},
		{"clamped", "?wait=10m&max=1000", schedapi.MaxAssignments, schedapi.MaxWait, schedapi.NoWant},
		{"wanted first", "?want=3-5,9&bg=2", 0, DefaultWait, schedapi.Want{Pieces: []int{3, 4, 5, 9}, Background: 2}},
		{"wanted only", "?want=7&bg=0", 0, DefaultWait, schedapi.Want{Pieces: []int{7}, Background: 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := &fake{}
			srv := newServer(t, f)
			status, b := do(t, srv, http.MethodGet, schedapi.PiecesPath(goodTask, "p")+tt.query, nil)
			require.Equal(t, http.StatusOK, status, string(b))
			var resp schedapi.PiecesResponse
			require.NoError(t, json.Unmarshal(b, &resp))
			require.Equal(t, goodTask, resp.TaskID)
			require.Len(t, f.polls, 1)
			require.Equal(t, tt.wantMax, f.polls[0].max)
			require.Equal(t, tt.wantWait, f.polls[0].deadline)
			require.Equal(t, tt.want, f.polls[0].want)
		})
	}

	// The long poll ends after wait with an empty answer.
	f := &fake{pollWait: true}
	srv := newServer(t, f)
	start := time.Now()
	status, b := do(t, srv, http.MethodGet, schedapi.PiecesPath(goodTask, "p")+"?wait=100ms", nil)
	require.Equal(t, http.StatusOK, status, string(b))
	require.GreaterOrEqual(t, time.Since(start), 100*time.Millisecond)
	require.Less(t, time.Since(start), 5*time.Second)
}

func TestWantUpdate(t *testing.T) {
	t.Parallel()
	f := &fake{}
	srv := newServer(t, f)
	status, b := do(t, srv, http.MethodPut, schedapi.WantPath(goodTask, "p")+"?max=4&want=2-3&bg=0", nil)
	require.Equal(t, http.StatusNoContent, status, string(b))
	require.Equal(t, []pollCall{{task: taskid.ID(goodTask), peer: "p", max: 4, want: schedapi.Want{Pieces: []int{2, 3}, Background: 0}}}, f.wantUpdates)
	status, _ = do(t, srv, http.MethodPut, schedapi.WantPath(goodTask, "p")+"?want=3-2", nil)
	require.Equal(t, http.StatusBadRequest, status)
	require.Len(t, f.wantUpdates, 1)
}

func TestReportAndHeartbeat(t *testing.T) {
	t.Parallel()
	f := &fake{}
	srv := newServer(t, f)
	results := []schedapi.PieceResult{
		{Piece: 0, From: "cdn", OK: true, Bytes: 4 << 20, Duration: time.Second},
		{Piece: 1, From: "peer-2", Error: strings.Repeat("x", 5000)},
	}
	status, b := do(t, srv, http.MethodPost, schedapi.ReportPath(goodTask, "p"), jsonBody(t, schedapi.ReportRequest{Results: results}))
	require.Equal(t, http.StatusNoContent, status, string(b))
	require.Len(t, f.reports, 1)
	require.Equal(t, results[0], f.reports[0][0])
	require.Len(t, f.reports[0][1].Error, maxErrorLen, "long errors are cut")

	status, b = do(t, srv, http.MethodDelete, schedapi.LeavePath(goodTask, "p"), nil)
	require.Equal(t, http.StatusNoContent, status, string(b))

	status, b = do(t, srv, http.MethodPost, schedapi.HeartbeatPath("p"), jsonBody(t, schedapi.HeartbeatRequest{Addr: "h:1", Tasks: []string{goodTask}}))
	require.Equal(t, http.StatusOK, status, string(b))
	var hb schedapi.HeartbeatResponse
	require.NoError(t, json.Unmarshal(b, &hb))
	require.Equal(t, []string{goodTask}, hb.Unknown)
}

// TestWithScheduler drives the real scheduler through the API.
func TestWithScheduler(t *testing.T) {
	t.Parallel()
	cdnPeer := schedapi.Peer{ID: "supernode", Addr: "127.0.0.1:8002"}
	s, err := scheduler.New(scheduler.Config{}, cdnPeer)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()

	d := digest.FromString("content")
	id, err := taskid.ForDigest(d)
	require.NoError(t, err)
	// The seeder adds the task and publishes piece 0, like the CDN would.
	seed := seederFunc(func(ctx context.Context, req cdn.Request) (schedapi.TaskInfo, error) {
		if info, err := s.TaskInfo(ctx, req.TaskID); err == nil {
			return info, nil
		}
		if err := s.AddTask(ctx, scheduler.TaskSpec{ID: req.TaskID, Size: 7, ContentDigest: req.Digest}); err != nil {
			return schedapi.TaskInfo{}, err
		}
		if err := s.PublishPiece(ctx, req.TaskID, 0, piece.Digest([]byte("content"))); err != nil {
			return schedapi.TaskInfo{}, err
		}
		return s.TaskInfo(ctx, req.TaskID)
	})
	srv := httptest.NewServer(New(stitched{schedAndSeed{s, seed}}, s, testKeys).Handler())
	defer srv.Close()

	status, b := do(t, srv, http.MethodPost, schedapi.RegisterPath(), jsonBody(t, schedapi.RegisterRequest{Peer: goodPeer, URL: "http://h/x", Digest: d.String()}))
	require.Equal(t, http.StatusOK, status, string(b))

	status, b = do(t, srv, http.MethodGet, schedapi.PiecesPath(id.String(), goodPeer.ID)+"?wait=1s", nil)
	require.Equal(t, http.StatusOK, status, string(b))
	var pr schedapi.PiecesResponse
	require.NoError(t, json.Unmarshal(b, &pr))
	require.Len(t, pr.Assignments, 1)
	require.True(t, pr.Assignments[0].FromCDN)
	require.Equal(t, cdnPeer, pr.Assignments[0].From)

	status, b = do(t, srv, http.MethodGet, schedapi.PiecesPath(id.String(), "stranger")+"?wait=0s", nil)
	require.Equal(t, http.StatusNotFound, status, string(b))
	var e schedapi.Error
	require.NoError(t, json.Unmarshal(b, &e))
	require.Equal(t, schedapi.CodePeerNotFound, e.Code)

	other := "sha256:" + strings.Repeat("0", 64)
	status, b = do(t, srv, http.MethodGet, schedapi.PiecesPath(other, goodPeer.ID)+"?wait=0s", nil)
	require.Equal(t, http.StatusNotFound, status, string(b))
	require.NoError(t, json.Unmarshal(b, &e))
	require.Equal(t, schedapi.CodeTaskNotFound, e.Code)
}

type seederFunc func(ctx context.Context, req cdn.Request) (schedapi.TaskInfo, error)

// schedAndSeed is the scheduler with a stand-in for the CDN.
type schedAndSeed struct {
	*scheduler.Scheduler
	seederFunc
}

// halves are test doubles of the task owner's two halves.
type halves interface {
	Admit(ctx context.Context, taskID taskid.ID, peerID string) error
	Ensure(ctx context.Context, req cdn.Request) (schedapi.TaskInfo, error)
	Join(ctx context.Context, taskID taskid.ID, p schedapi.Peer, have *piece.Set) (schedapi.TaskInfo, error)
}

// stitched stands in for task.Manager over test doubles of its halves, in
// its order: admit, ensure, then join unless the task failed (without the
// pieces the peer has when they were cut with another size).
type stitched struct{ h halves }

func (s stitched) Register(ctx context.Context, r task.Registration) (schedapi.TaskInfo, error) {
	if err := s.h.Admit(ctx, r.TaskID, r.Peer.ID); err != nil {
		return schedapi.TaskInfo{}, err
	}
	info, err := s.h.Ensure(ctx, r.Request)
	if err != nil || info.State == schedapi.TaskFailed {
		return info, err
	}
	have := r.Have
	if have != nil && r.PieceSize != info.PieceSize {
		have = nil
	}
	return s.h.Join(ctx, r.TaskID, r.Peer, have)
}

func (s stitched) RetryAfter(id taskid.ID) time.Duration {
	if ra, ok := s.h.(interface{ RetryAfter(taskid.ID) time.Duration }); ok {
		return ra.RetryAfter(id)
	}
	return 0
}

func (f seederFunc) Ensure(ctx context.Context, req cdn.Request) (schedapi.TaskInfo, error) {
	return f(ctx, req)
}

// One client address gets its registration and poll rates and no more: past
// the burst it is answered 429 with Retry-After, and nothing reaches the
// scheduler or the CDN; another address is not slowed by it.
func TestRateLimitPerAddress(t *testing.T) {
	t.Parallel()
	f := &fake{}
	h := New(stitched{f}, f, testKeys, WithLimits(Config{RegisterRate: 0.001, RegisterBurst: 3, PollRate: 0.001, PollBurst: 2})).Handler()
	id := "sha256:" + strings.Repeat("c", 64)
	send := func(addr, method, path string, body any) *httptest.ResponseRecorder {
		var r io.Reader
		if body != nil {
			r = jsonBody(t, body)
		}
		req := httptest.NewRequestWithContext(t.Context(), method, path, r)
		req.RemoteAddr = addr
		testKeys.Set(req.Header)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	reg := schedapi.RegisterRequest{Peer: goodPeer, URL: "http://h/x", Digest: id}
	for i := range 3 {
		require.Equal(t, http.StatusOK, send("10.1.1.1:5000", http.MethodPost, schedapi.RegisterPath(), reg).Code, "registration %d", i)
	}
	before := f.calls()
	rec := send("10.1.1.1:5001", http.MethodPost, schedapi.RegisterPath(), reg)
	require.Equal(t, http.StatusTooManyRequests, rec.Code, rec.Body.String())
	require.NotEmpty(t, rec.Header().Get("Retry-After"))
	var e schedapi.Error
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &e))
	require.Equal(t, schedapi.CodeUnavailable, e.Code)
	require.Equal(t, before, f.calls(), "a refused registration reaches nothing")
	require.Equal(t, http.StatusOK, send("10.1.1.2:5000", http.MethodPost, schedapi.RegisterPath(), reg).Code, "another address has its own rate")

	poll := schedapi.PiecesPath(id, goodPeer.ID) + "?wait=0s"
	for range 2 {
		require.Equal(t, http.StatusOK, send("10.1.1.3:1", http.MethodGet, poll, nil).Code)
	}
	require.Equal(t, http.StatusTooManyRequests, send("10.1.1.3:1", http.MethodGet, poll, nil).Code)
	// Reports are not polls: they are not limited by the poll rate.
	rep := schedapi.ReportRequest{Results: []schedapi.PieceResult{{Piece: 0, From: "seed", OK: true}}}
	require.Equal(t, http.StatusNoContent, send("10.1.1.3:1", http.MethodPost, schedapi.ReportPath(id, goodPeer.ID), rep).Code)
}

// A registration the scheduler's bounds refuse is 503 UNAVAILABLE, and
// nothing is created: the CDN is not asked to ensure the task.
func TestRegisterOverBounds(t *testing.T) {
	t.Parallel()
	f := &fake{admitErr: fmt.Errorf("peer p joins too many tasks: %w", scheduler.ErrLimit)}
	srv := newServer(t, f)
	status, b := do(t, srv, http.MethodPost, schedapi.RegisterPath(), jsonBody(t, schedapi.RegisterRequest{Peer: goodPeer, URL: "http://h/x"}))
	require.Equal(t, http.StatusServiceUnavailable, status, string(b))
	var e schedapi.Error
	require.NoError(t, json.Unmarshal(b, &e))
	require.Equal(t, schedapi.CodeUnavailable, e.Code)
	require.Zero(t, f.calls(), "no task created, no source fetched")
}
