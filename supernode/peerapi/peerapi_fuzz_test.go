package peerapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
	"github.com/damselfly/damselfly/supernode/cdn"
)

// strictBackend is a scheduler and a CDN that answers at once and records
// any value reaching it that the handlers should have refused.
type strictBackend struct {
	mu   sync.Mutex
	errs []string
}

func (b *strictBackend) bad(format string, args ...any) {
	b.mu.Lock()
	b.errs = append(b.errs, fmt.Sprintf(format, args...))
	b.mu.Unlock()
}

func (b *strictBackend) take() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	errs := b.errs
	b.errs = nil
	return errs
}

func (b *strictBackend) ids(taskID taskid.ID, peerID string) {
	if _, err := taskid.Parse(taskID.String()); err != nil {
		b.bad("task id %q reached the scheduler", taskID)
	}
	if schedapi.ValidatePeerID(peerID) != nil {
		b.bad("peer id %q reached the scheduler", peerID)
	}
}

func (b *strictBackend) Ensure(_ context.Context, req cdn.Request) (schedapi.TaskInfo, error) {
	if _, err := taskid.Parse(req.TaskID.String()); err != nil || checkSourceURL(req.URL) != nil || checkHeader(req.Header) != nil {
		b.bad("ensure %q of %q with header %q reached the CDN", req.TaskID, req.URL, req.Header)
	}
	if req.Digest != "" && string(req.Digest) != req.TaskID.String() {
		b.bad("digest %q for task %q", req.Digest, req.TaskID)
	}
	return schedapi.TaskInfo{TaskID: req.TaskID.String(), State: schedapi.TaskRunning, Size: -1, PieceSize: 4 << 20, PieceCount: -1}, nil
}

func (b *strictBackend) Admit(_ context.Context, taskID taskid.ID, peerID string) error {
	b.ids(taskID, peerID)
	return nil
}

func (b *strictBackend) Join(_ context.Context, taskID taskid.ID, p schedapi.Peer, have *piece.Set) (schedapi.TaskInfo, error) {
	b.ids(taskID, p.ID)
	if schedapi.ValidatePeerAddr(p.Addr) != nil {
		b.bad("addr %q reached the scheduler", p.Addr)
	}
	for _, i := range have.Indices() {
		if i < 0 {
			b.bad("negative piece %d in have", i)
		}
	}
	return schedapi.TaskInfo{TaskID: taskID.String(), State: schedapi.TaskRunning, Size: -1, PieceSize: 4 << 20, PieceCount: -1}, nil
}

func (b *strictBackend) SetWant(ctx context.Context, taskID taskid.ID, peerID string, maxN int, want schedapi.Want) error {
	b.ids(taskID, peerID)
	if maxN < 0 || maxN > schedapi.MaxAssignments || !want.Valid() || want.Background < -1 {
		b.bad("want update max %d %+v reached the scheduler", maxN, want)
	}
	return nil
}

func (b *strictBackend) PollWant(ctx context.Context, taskID taskid.ID, peerID string, maxN int, want schedapi.Want) (schedapi.PiecesResponse, error) {
	b.ids(taskID, peerID)
	if !want.Valid() || want.Background < -1 {
		b.bad("want %+v reached the scheduler", want)
	}
	if maxN < 0 || maxN > schedapi.MaxAssignments {
		b.bad("max %d reached the scheduler", maxN)
	}
	if _, ok := ctx.Deadline(); !ok {
		b.bad("poll without a deadline")
	}
	return schedapi.PiecesResponse{TaskInfo: schedapi.TaskInfo{TaskID: taskID.String(), State: schedapi.TaskRunning}}, nil
}

func (b *strictBackend) Report(_ context.Context, taskID taskid.ID, peerID string, results []schedapi.PieceResult) error {
	b.ids(taskID, peerID)
	if len(results) > maxResults {
		b.bad("%d results reached the scheduler", len(results))
	}
	for _, r := range results {
		if r.Piece < 0 || r.Bytes < 0 || r.Duration < 0 || schedapi.ValidatePeerID(r.From) != nil || len(r.Error) > maxErrorLen {
			b.bad("result %+v reached the scheduler", r)
		}
	}
	return nil
}

func (b *strictBackend) Leave(_ context.Context, taskID taskid.ID, peerID string) error {
	b.ids(taskID, peerID)
	return nil
}

func (b *strictBackend) Heartbeat(_ context.Context, peerID, addr string, tasks []taskid.ID) ([]taskid.ID, error) {
	if schedapi.ValidatePeerID(peerID) != nil || (addr != "" && schedapi.ValidatePeerAddr(addr) != nil) || len(tasks) > maxHeartbeatIDs {
		b.bad("heartbeat of %q at %q with %d tasks reached the scheduler", peerID, addr, len(tasks))
	}
	for _, id := range tasks {
		if _, err := taskid.Parse(id.String()); err != nil {
			b.bad("heartbeat task %q reached the scheduler", id)
		}
	}
	return nil, nil
}

// FuzzPeerAPI drives the real handler with fuzzed methods, paths and bodies:
// never a 5xx, every error a schedapi.Error, and nothing the validation
// should stop reaches the scheduler or the CDN.
func FuzzPeerAPI(f *testing.F) {
	reg := `{"peer":{"id":"peer-1","addr":"127.0.0.1:65002"},"url":"http://127.0.0.1:1/blob","digest":"","filter":["a"],"identifier":"x","have":"AQ==","pieceSize":4194304}`
	for _, s := range []struct{ method, path, body string }{
		{"POST", schedapi.RegisterPath(), reg},
		{"POST", schedapi.RegisterPath(), `{"peer":{"id":"p","addr":"h:1"},"url":"http://h/x","digest":"sha256:` + strings.Repeat("ab", 32) + `"}`},
		{"POST", schedapi.RegisterPath(), `{"peer":{"id":"p","addr":"h:1"},"url":"http://h/x","header":{"A":["b\r\nc"]}}`},
		{"POST", schedapi.RegisterPath(), `{"peer":{"id":"../p","addr":"h:0"},"url":"file:///etc/passwd","pieceSize":-1}`},
		{"POST", schedapi.RegisterPath(), `{"url":"` + strings.Repeat("a", 100) + `"} {}`},
		{"GET", schedapi.PiecesPath(goodTask, "peer-1") + "?max=3&wait=0s", ""},
		{"GET", schedapi.PiecesPath(goodTask, "peer-1") + "?max=99999999999999999999&wait=9999999h", ""},
		{"GET", schedapi.PiecesPath(goodTask, "peer-1") + "?max=-1&wait=-1s", ""},
		{"GET", "/api/peer/v1/tasks/..%2F..%2Fetc%2Fpasswd/peers/p/pieces", ""},
		{"GET", "/api/peer/v1/tasks/%2Fetc%2Fpasswd/peers/p%00/pieces", ""},
		{"POST", schedapi.ReportPath(goodTask, "peer-1"), `{"results":[{"piece":1,"from":"q","ok":true,"bytes":10,"duration":5}]}`},
		{"POST", schedapi.ReportPath(goodTask, "peer-1"), `{"results":[{"piece":-1,"from":"","bytes":-1}]}`},
		{"POST", schedapi.ReportPath(goodTask, "peer-1"), `{"results":[{"piece":9223372036854775808}]}`},
		{"DELETE", schedapi.LeavePath(goodTask, "peer-1"), ""},
		{"POST", schedapi.HeartbeatPath("peer-1"), `{"addr":"127.0.0.1:1","tasks":["` + goodTask + `"]}`},
		{"POST", schedapi.HeartbeatPath("peer-1"), `{"addr":"nope","tasks":["../x"]}`},
		{"PUT", "/api/peer/v1/nothing", "x"},
	} {
		f.Add(s.method, s.path, []byte(s.body))
	}
	be := &strictBackend{}
	h := New(stitched{be}, be, testKeys).Handler()
	f.Fuzz(func(t *testing.T, method, path string, body []byte) {
		req, err := http.NewRequest(method, "http://supernode"+path, bytes.NewReader(body))
		if err != nil {
			return // not a request line a server would hand to the handler
		}
		testKeys.Set(req.Header)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("%s %q with %q: %d %s", method, path, body, rec.Code, rec.Body)
		}
		if rec.Code >= 400 {
			var e schedapi.Error
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Code == "" || e.Message == "" {
				t.Fatalf("%s %q: %d with body %q, not a schedapi.Error", method, path, rec.Code, rec.Body)
			}
		}
		if rec.Code == http.StatusOK && !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("%s %q: 200 with invalid JSON %q", method, path, rec.Body)
		}
		for _, msg := range be.take() {
			t.Errorf("%s %q with %q: %s", method, path, body, msg)
		}
	})
}
