package adminapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
	"github.com/damselfly/damselfly/supernode/cdn"
	"github.com/damselfly/damselfly/supernode/scheduler"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const token = "let-me-in"

// fakeCDN deletes through the scheduler, like the CDN does.
type fakeCDN struct {
	sched *scheduler.Scheduler
	fail  error
}

func (f *fakeCDN) Delete(ctx context.Context, id taskid.ID) error {
	if f.fail != nil {
		return f.fail
	}
	if err := f.sched.RemoveTask(ctx, id); err != nil {
		if errors.Is(err, scheduler.ErrTaskNotFound) {
			return fmt.Errorf("delete task %s: %w", id, cdn.ErrNotFound)
		}
		return err
	}
	return nil
}

func (f *fakeCDN) SourceBytes(id taskid.ID) int64 { return 1234 }

type fixture struct {
	srv   *httptest.Server
	sched *scheduler.Scheduler
	cdn   *fakeCDN
	task  string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	// The CDN's rate over the one member's: a fanout of 8.
	s, err := scheduler.New(scheduler.Config{CDNUploadRate: 64 << 20}, schedapi.Peer{ID: "supernode", Addr: "127.0.0.1:8002"})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	body := []byte("hello, world")
	d := digest.FromBytes(body)
	id, err := taskid.ForDigest(d)
	require.NoError(t, err)
	require.NoError(t, s.AddTask(t.Context(), scheduler.TaskSpec{ID: id, URL: "http://origin/blob", Size: int64(len(body)), ContentDigest: d}))
	require.NoError(t, s.PublishPiece(t.Context(), id, 0, piece.Digest(body)))
	_, err = s.Join(t.Context(), id, schedapi.Peer{ID: "peer-1", Addr: "127.0.0.1:65002", DownloadRate: 8 << 20}, nil)
	require.NoError(t, err)

	f := &fixture{sched: s, cdn: &fakeCDN{sched: s}, task: d.String()}
	f.srv = httptest.NewServer(New(s, f.cdn, token))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) do(t *testing.T, method, path, auth string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, f.srv.URL+path, nil)
	require.NoError(t, err)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := f.srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, b
}

func TestAuth(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	tests := []struct {
		name   string
		auth   string
		status int
	}{
		{"no token", "", 401},
		{"wrong token", "Bearer nope", 401},
		{"token prefix", "Bearer let-me", 401},
		{"token with extra", "Bearer let-me-in-please", 401},
		{"basic scheme", "Basic " + token, 401},
		{"raw token", token, 401},
		{"right token", "Bearer " + token, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			for _, path := range []string{"/api/v1/tasks", "/api/v1/tasks/" + f.task, "/api/v1/peers"} {
				resp, b := f.do(t, http.MethodGet, path, tt.auth)
				require.Equal(t, tt.status, resp.StatusCode, "%s: %s", path, b)
				if tt.status == 401 {
					require.True(t, strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer"))
					var e errorBody
					require.NoError(t, json.Unmarshal(b, &e))
					require.Equal(t, "UNAUTHORIZED", e.Code)
				}
			}
			resp, _ := f.do(t, http.MethodDelete, "/api/v1/tasks/"+f.task, tt.auth)
			if tt.status == 401 {
				require.Equal(t, 401, resp.StatusCode)
			}
		})
	}
}

func TestEmptyTokenRefusesEverything(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	srv := httptest.NewServer(New(f.sched, f.cdn, ""))
	defer srv.Close()
	for _, auth := range []string{"", "Bearer ", "Bearer x"} {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, srv.URL+"/api/v1/tasks", nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", auth)
		resp, err := srv.Client().Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, 401, resp.StatusCode)
	}
}

func TestTasksAndPeers(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	auth := "Bearer " + token

	resp, b := f.do(t, http.MethodGet, "/api/v1/tasks", auth)
	require.Equal(t, 200, resp.StatusCode, string(b))
	var list TaskList
	require.NoError(t, json.Unmarshal(b, &list))
	tasks := list.Tasks
	require.Len(t, tasks, 1)
	require.Equal(t, f.task, tasks[0].TaskID)
	require.Equal(t, "running", tasks[0].State)
	require.Equal(t, int64(12), tasks[0].Size)
	require.Equal(t, 1, tasks[0].PieceCount)
	require.Equal(t, 1, tasks[0].Published)
	require.Len(t, tasks[0].Peers, 1)
	require.Equal(t, int64(1234), tasks[0].BytesFromSource)
	require.Zero(t, tasks[0].BytesFromCDN)

	resp, b = f.do(t, http.MethodGet, "/api/v1/tasks/"+f.task, auth)
	require.Equal(t, 200, resp.StatusCode, string(b))
	var task Task
	require.NoError(t, json.Unmarshal(b, &task))
	require.Equal(t, "http://origin/blob", task.URL)
	require.Len(t, task.Peers, 1)
	require.Equal(t, "peer-1", task.Peers[0].ID)
	require.Equal(t, "127.0.0.1:65002", task.Peers[0].Addr)
	require.Equal(t, int64(8<<20), task.Peers[0].DownloadRate)
	require.Equal(t, 8, task.CDNFanout, "64 MiB/s of CDN over the member's 8 MiB/s")

	resp, b = f.do(t, http.MethodGet, "/api/v1/peers", auth)
	require.Equal(t, 200, resp.StatusCode, string(b))
	var plist PeerList
	require.NoError(t, json.Unmarshal(b, &plist))
	peers := plist.Peers
	require.Len(t, peers, 1)
	require.Equal(t, []string{f.task}, peers[0].Tasks)
}

func TestErrors(t *testing.T) {
	t.Parallel()
	auth := "Bearer " + token
	unknown := "sha256:" + strings.Repeat("0", 64)
	tests := []struct {
		name    string
		method  string
		path    string
		cdnErr  error
		status  int
		code    string
		deleted bool
	}{
		{"unknown task", http.MethodGet, "/api/v1/tasks/" + unknown, nil, 404, "NOT_FOUND", false},
		{"bad task id", http.MethodGet, "/api/v1/tasks/sha256:xyz", nil, 400, "INVALID_ARGUMENT", false},
		{"path traversal", http.MethodGet, "/api/v1/tasks/..%2f..%2fetc", nil, 404, "NOT_FOUND", false},
		{"delete unknown", http.MethodDelete, "/api/v1/tasks/" + unknown, nil, 404, "NOT_FOUND", false},
		{"delete bad id", http.MethodDelete, "/api/v1/tasks/nope", nil, 400, "INVALID_ARGUMENT", false},
		{"delete conflict", http.MethodDelete, "/api/v1/tasks/TASK", scheduler.ErrTaskExists, 409, "CONFLICT", false},
		{"delete internal", http.MethodDelete, "/api/v1/tasks/TASK", errors.New("disk /x/y failed"), 500, "INTERNAL", false},
		{"unknown route", http.MethodGet, "/api/v1/nothing", nil, 404, "NOT_FOUND", false},
		{"wrong method", http.MethodPost, "/api/v1/tasks", nil, 405, "METHOD_NOT_ALLOWED", false},
		{"delete works", http.MethodDelete, "/api/v1/tasks/TASK", nil, 204, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			f.cdn.fail = tt.cdnErr
			resp, b := f.do(t, tt.method, strings.Replace(tt.path, "TASK", f.task, 1), auth)
			require.Equal(t, tt.status, resp.StatusCode, string(b))
			if tt.code != "" {
				var e errorBody
				require.NoError(t, json.Unmarshal(b, &e), string(b))
				require.Equal(t, tt.code, e.Code)
				if tt.status == 500 {
					require.Equal(t, "internal error", e.Message)
				}
			}
			_, err := f.sched.Task(t.Context(), taskid.ID(f.task))
			if tt.deleted {
				require.ErrorIs(t, err, scheduler.ErrTaskNotFound)
				resp, _ := f.do(t, http.MethodGet, "/api/v1/tasks/"+f.task, auth)
				require.Equal(t, 404, resp.StatusCode)
			} else {
				require.NoError(t, err)
			}
		})
	}
}
