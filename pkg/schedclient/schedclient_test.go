package schedclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/damselfly/damselfly/pkg/clusterauth"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	task1 = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	task2 = "2222222222222222222222222222222222222222222222222222222222222222"
)

// fakeNode is a minimal supernode speaking schedapi, recording what it got.
type fakeNode struct {
	srv  *httptest.Server
	addr string

	mu        sync.Mutex
	calls     map[string]int
	registers []schedapi.RegisterRequest
	reports   []schedapi.PieceResult
	beats     []schedapi.HeartbeatRequest
	query     []string
	// fail, when set, answers every call with this status and code.
	failStatus int
	failCode   schedapi.ErrorCode
	failLeft   int // answer failStatus this many times (0: always when failStatus set)
	unknown    []string
}

func newFakeNode(t *testing.T) *fakeNode {
	t.Helper()
	f := &fakeNode{calls: map[string]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc(schedapi.RouteRegister, func(w http.ResponseWriter, r *http.Request) {
		if f.fail(w, "register") {
			return
		}
		var req schedapi.RegisterRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeErr(w, http.StatusBadRequest, schedapi.CodeInvalid, err.Error())
			return
		}
		f.mu.Lock()
		f.registers = append(f.registers, req)
		f.mu.Unlock()
		id := req.Digest
		if id == "" {
			id = task2
		}
		_ = json.NewEncoder(w).Encode(schedapi.RegisterResponse{TaskInfo: schedapi.TaskInfo{
			TaskID: id, State: schedapi.TaskRunning, Size: 10, PieceSize: 4, PieceCount: 3,
		}})
	})
	mux.HandleFunc(schedapi.RoutePieces, func(w http.ResponseWriter, r *http.Request) {
		if f.fail(w, "pieces") {
			return
		}
		f.mu.Lock()
		f.query = append(f.query, r.URL.RawQuery)
		f.mu.Unlock()
		_ = json.NewEncoder(w).Encode(schedapi.PiecesResponse{
			TaskInfo: schedapi.TaskInfo{TaskID: r.PathValue("task"), State: schedapi.TaskRunning},
			Assignments: []schedapi.Assignment{{
				Piece: 1, Offset: 4, Length: 4, Digest: "sha256:ab",
				From: schedapi.Peer{ID: "p2", Addr: "127.0.0.1:1"},
			}},
		})
	})
	mux.HandleFunc(schedapi.RouteReport, func(w http.ResponseWriter, r *http.Request) {
		if f.fail(w, "report") {
			return
		}
		var req schedapi.ReportRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		f.mu.Lock()
		f.reports = append(f.reports, req.Results...)
		f.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc(schedapi.RouteLeave, func(w http.ResponseWriter, r *http.Request) {
		if f.fail(w, "leave") {
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc(schedapi.RouteHeartbeat, func(w http.ResponseWriter, r *http.Request) {
		if f.fail(w, "heartbeat") {
			return
		}
		var req schedapi.HeartbeatRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		f.mu.Lock()
		f.beats = append(f.beats, req)
		var unknown []string
		for _, t := range req.Tasks {
			for _, u := range f.unknown {
				if t == u {
					unknown = append(unknown, t)
				}
			}
		}
		f.mu.Unlock()
		_ = json.NewEncoder(w).Encode(schedapi.HeartbeatResponse{Unknown: unknown})
	})
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	f.addr = strings.TrimPrefix(f.srv.URL, "http://")
	return f
}

func (f *fakeNode) fail(w http.ResponseWriter, name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[name]++
	if f.failStatus == 0 {
		return false
	}
	if f.failLeft > 0 {
		f.failLeft--
		if f.failLeft == 0 {
			defer func() { f.failStatus = 0 }()
		}
	}
	writeErr(w, f.failStatus, f.failCode, "injected")
	return true
}

func (f *fakeNode) count(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[name]
}

func writeErr(w http.ResponseWriter, status int, code schedapi.ErrorCode, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(schedapi.Error{Code: code, Message: msg})
}

// deadAddr returns a 127.0.0.1 address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

func TestNewValidatesNodes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		nodes []string
		ok    bool
	}{
		{"none", nil, false},
		{"host port", []string{"127.0.0.1:8002"}, true},
		{"url", []string{"http://127.0.0.1:8002/ignored"}, true},
		{"no port", []string{"127.0.0.1"}, false},
		{"bad port", []string{"127.0.0.1:99999"}, false},
		{"bad scheme", []string{"ftp://127.0.0.1:21"}, false},
		{"one bad of two", []string{"127.0.0.1:1", "x"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := New(tt.nodes)
			if !tt.ok {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, []string{"http://127.0.0.1:8002"}, c.Supernodes())
		})
	}
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	f := newFakeNode(t)
	c, err := New([]string{f.addr})
	require.NoError(t, err)
	ctx := t.Context()

	reg, err := c.Register(ctx, schedapi.RegisterRequest{
		Peer:   schedapi.Peer{ID: "p1", Addr: "127.0.0.1:9"},
		URL:    "http://origin.example/file",
		Header: http.Header{"Authorization": {"Bearer s3cret"}},
		Digest: task1,
	})
	require.NoError(t, err)
	require.Equal(t, task1, reg.TaskID)
	require.Equal(t, int64(4), reg.PieceSize)
	require.Equal(t, "Bearer s3cret", f.registers[0].Header.Get("Authorization"))

	pr, err := c.Pieces(ctx, task1, "p1", 500, time.Hour, schedapi.NoWant)
	require.NoError(t, err)
	require.Len(t, pr.Assignments, 1)
	require.Equal(t, "p2", pr.Assignments[0].From.ID)
	// max and wait are clamped to the API limits.
	require.Equal(t, fmt.Sprintf("max=%d&wait=%s", schedapi.MaxAssignments, schedapi.MaxWait), f.query[0])

	require.NoError(t, c.Report(ctx, task1, "p1", []schedapi.PieceResult{{Piece: 1, From: "p2", OK: true, Bytes: 4}}))
	require.Equal(t, []schedapi.PieceResult{{Piece: 1, From: "p2", OK: true, Bytes: 4}}, f.reports)
	require.NoError(t, c.Report(ctx, task1, "p1", nil))
	require.Equal(t, 1, f.count("report"), "an empty report is not sent")

	require.NoError(t, c.Leave(ctx, task1, "p1"))
	require.Equal(t, 1, f.count("leave"))
}

func TestRejectsBadIDs(t *testing.T) {
	t.Parallel()
	f := newFakeNode(t)
	c, err := New([]string{f.addr})
	require.NoError(t, err)
	tests := []struct {
		name string
		call func() error
	}{
		{"pieces bad task", func() error { _, err := c.Pieces(t.Context(), "../etc", "p1", 1, 0, schedapi.NoWant); return err }},
		{"report bad peer", func() error { return c.Report(t.Context(), task1, "p/1", nil) }},
		{"leave empty peer", func() error { return c.Leave(t.Context(), task1, "") }},
		{"heartbeat long peer", func() error {
			_, err := c.Heartbeat(t.Context(), strings.Repeat("a", 129), schedapi.HeartbeatRequest{})
			return err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Error(t, tt.call())
		})
	}
	require.Zero(t, f.count("pieces")+f.count("report")+f.count("leave")+f.count("heartbeat"))
}

func TestAPIErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		status int
		code   schedapi.ErrorCode
		is     error
		not    error
	}{
		{"task not found", http.StatusNotFound, schedapi.CodeTaskNotFound, ErrTaskNotFound, ErrPeerNotFound},
		{"peer not found", http.StatusNotFound, schedapi.CodePeerNotFound, ErrPeerNotFound, ErrTaskNotFound},
		{"task failed", http.StatusConflict, schedapi.CodeTaskFailed, ErrTaskFailed, ErrUnreachable},
		{"invalid", http.StatusBadRequest, schedapi.CodeInvalid, ErrInvalid, ErrTaskNotFound},
		{"internal", http.StatusInternalServerError, schedapi.CodeInternal, nil, ErrUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeNode(t)
			f.failStatus, f.failCode = tt.status, tt.code
			c, err := New([]string{f.addr}, WithRetry(3, time.Millisecond))
			require.NoError(t, err)
			_, err = c.Pieces(t.Context(), task1, "p1", 1, 0, schedapi.NoWant)
			var ae *APIError
			require.ErrorAs(t, err, &ae)
			require.Equal(t, tt.status, ae.StatusCode)
			require.Equal(t, tt.code, ae.Code)
			require.Equal(t, "injected", ae.Message)
			if tt.is != nil {
				require.ErrorIs(t, err, tt.is)
			}
			require.NotErrorIs(t, err, tt.not)
			require.Equal(t, 1, f.count("pieces"), "only 503 is retried")
		})
	}
}

func TestNonJSONErrorBody(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "bad gateway from a proxy", http.StatusBadGateway)
	}))
	t.Cleanup(srv.Close)
	c, err := New([]string{srv.URL})
	require.NoError(t, err)
	err = c.Leave(t.Context(), task1, "p1")
	var ae *APIError
	require.ErrorAs(t, err, &ae)
	require.Equal(t, http.StatusBadGateway, ae.StatusCode)
	require.Equal(t, "bad gateway from a proxy", ae.Message)
	require.Contains(t, err.Error(), "leave: supernode: 502")
}

func TestRetryOn503(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		failTimes int
		call      func(*Client, context.Context) error
		counter   string
		wantErr   bool
		wantCalls int
	}{
		{"pieces recovers", 2, func(c *Client, ctx context.Context) error {
			_, err := c.Pieces(ctx, task1, "p1", 1, 0, schedapi.NoWant)
			return err
		}, "pieces", false, 3},
		{"pieces gives up", 10, func(c *Client, ctx context.Context) error {
			_, err := c.Pieces(ctx, task1, "p1", 1, 0, schedapi.NoWant)
			return err
		}, "pieces", true, 3},
		{"report is not retried", 2, func(c *Client, ctx context.Context) error {
			return c.Report(ctx, task1, "p1", []schedapi.PieceResult{{Piece: 0, From: "x", OK: true}})
		}, "report", true, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeNode(t)
			f.failStatus, f.failCode, f.failLeft = http.StatusServiceUnavailable, schedapi.CodeUnavailable, tt.failTimes
			c, err := New([]string{f.addr}, WithRetry(3, time.Millisecond))
			require.NoError(t, err)
			err = tt.call(c, t.Context())
			if tt.wantErr {
				require.ErrorIs(t, err, ErrUnavailable)
			} else {
				require.NoError(t, err)
			}
			require.Equal(t, tt.wantCalls, f.count(tt.counter))
		})
	}
}

func TestUnreachable(t *testing.T) {
	t.Parallel()
	c, err := New([]string{deadAddr(t)}, WithRetry(2, time.Millisecond))
	require.NoError(t, err)
	_, err = c.Register(t.Context(), schedapi.RegisterRequest{Peer: schedapi.Peer{ID: "p1"}, URL: "http://o/x"})
	require.ErrorIs(t, err, ErrUnreachable)
	require.Contains(t, err.Error(), "connection refused")
	// A dial failure never reached a node, so even Report fails over.
	err = c.Report(t.Context(), task1, "p1", []schedapi.PieceResult{{Piece: 0, From: "x", OK: true}})
	require.ErrorIs(t, err, ErrUnreachable)
}

func TestCanceledIsNotUnreachable(t *testing.T) {
	t.Parallel()
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(block) })
	c, err := New([]string{srv.URL})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	_, err = c.Pieces(ctx, task1, "p1", 1, time.Second, schedapi.NoWant)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.NotErrorIs(t, err, ErrUnreachable)
}

func TestFailoverToNextNode(t *testing.T) {
	t.Parallel()
	f := newFakeNode(t)
	dead := deadAddr(t)
	// Whatever the hash order, the dead node is skipped.
	for _, nodes := range [][]string{{dead, f.addr}, {f.addr, dead}} {
		c, err := New(nodes, WithRetry(1, 0))
		require.NoError(t, err)
		reg, err := c.Register(t.Context(), schedapi.RegisterRequest{Peer: schedapi.Peer{ID: "p1"}, URL: "http://o/x"})
		require.NoError(t, err)
		// The task sticks to the node it was registered on.
		require.Equal(t, "http://"+f.addr, c.nodeFor(reg.TaskID)[0])
		_, err = c.Pieces(t.Context(), taskid.ID(reg.TaskID), "p1", 1, 0, schedapi.NoWant)
		require.NoError(t, err)
	}
	require.Equal(t, 2, f.count("register"))
	require.Equal(t, 2, f.count("pieces"))
}

func TestRendezvous(t *testing.T) {
	t.Parallel()
	nodes := []string{"http://a:1", "http://b:1", "http://c:1", "http://d:1"}
	owners := map[string]int{}
	moved := 0
	for i := range 4000 {
		key := fmt.Sprintf("%064x", i)
		order := rendezvous(nodes, key)
		require.ElementsMatch(t, nodes, order)
		require.Equal(t, order, rendezvous([]string{nodes[3], nodes[1], nodes[0], nodes[2]}, key), "order does not depend on list order")
		owners[order[0]]++
		// Removing a node only moves the keys it owned.
		without := rendezvous(nodes[:3], key)
		if order[0] != nodes[3] {
			require.Equal(t, order[0], without[0])
		} else {
			moved++
		}
	}
	for _, n := range nodes {
		require.InDelta(t, 1000, owners[n], 200, "node %s owns a fair share", n)
	}
	require.Equal(t, owners[nodes[3]], moved)
}

func TestHeartbeatGroupsTasksByNode(t *testing.T) {
	t.Parallel()
	a, b := newFakeNode(t), newFakeNode(t)
	a.unknown = []string{task1}
	b.unknown = []string{task1, task2}
	c, err := New([]string{a.addr, b.addr})
	require.NoError(t, err)
	// Pin the two tasks to different nodes the way Register would.
	c.sticky[task1] = "http://" + a.addr
	c.sticky[task2] = "http://" + b.addr
	resp, err := c.Heartbeat(t.Context(), "p1", schedapi.HeartbeatRequest{Addr: "127.0.0.1:9", Tasks: []string{task1, task2}})
	require.NoError(t, err)
	require.ElementsMatch(t, []string{task1, task2}, resp.Unknown)
	require.Equal(t, []schedapi.HeartbeatRequest{{Addr: "127.0.0.1:9", Tasks: []string{task1}}}, a.beats)
	require.Equal(t, []schedapi.HeartbeatRequest{{Addr: "127.0.0.1:9", Tasks: []string{task2}}}, b.beats)

	// With no tasks the peer still heartbeats one node.
	_, err = c.Heartbeat(t.Context(), "p1", schedapi.HeartbeatRequest{Addr: "127.0.0.1:9"})
	require.NoError(t, err)
	require.Equal(t, 3, a.count("heartbeat")+b.count("heartbeat"))
}

// The tasks of a supernode that cannot be reached are heartbeated to the
// next one in their order; it answers them unknown, so the peer registers
// them there.
func TestHeartbeatMovesTasksOfDeadNode(t *testing.T) {
	t.Parallel()
	live := newFakeNode(t)
	live.unknown = []string{task1, task2}
	dead := deadAddr(t)
	c, err := New([]string{dead, live.addr}, WithRetry(1, 0))
	require.NoError(t, err)
	c.sticky[task1] = "http://" + dead
	c.sticky[task2] = "http://" + live.addr
	resp, err := c.Heartbeat(t.Context(), "p1", schedapi.HeartbeatRequest{Addr: "127.0.0.1:9", Tasks: []string{task1, task2}})
	require.NoError(t, err)
	require.ElementsMatch(t, []string{task1, task2}, resp.Unknown)
	require.Len(t, live.beats, 2, "one beat for its own task, one for the moved one")
	require.Equal(t, []string{task2}, live.beats[0].Tasks)
	require.Equal(t, []string{task1}, live.beats[1].Tasks)

	// Every node down: an error wrapping ErrUnreachable, nothing unknown.
	c2, err := New([]string{dead, deadAddr(t)}, WithRetry(1, 0))
	require.NoError(t, err)
	resp, err = c2.Heartbeat(t.Context(), "p1", schedapi.HeartbeatRequest{Addr: "127.0.0.1:9", Tasks: []string{task1}})
	require.ErrorIs(t, err, ErrUnreachable)
	require.Empty(t, resp.Unknown)
}

// Order is the rendezvous order, the same for every client of the same
// supernodes whatever the order they were given in, and it does not follow
// the task's registration.
func TestOrder(t *testing.T) {
	t.Parallel()
	a, err := New([]string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"})
	require.NoError(t, err)
	b, err := New([]string{"127.0.0.1:3", "127.0.0.1:1", "127.0.0.1:2"})
	require.NoError(t, err)
	owners := map[string]bool{}
	for i := range 30 {
		id := taskid.ID(fmt.Sprintf("%064x", i))
		require.Equal(t, a.Order(id), b.Order(id))
		require.ElementsMatch(t, a.Supernodes(), a.Order(id))
		owners[a.Order(id)[0]] = true
	}
	require.Len(t, owners, 3, "30 tasks spread over the three nodes")
	a.sticky[task2] = a.Order(task2)[2]
	require.Equal(t, a.Order(task2)[2], a.nodeFor(task2)[0], "calls go to the node the task is on")
	require.Equal(t, b.Order(task2), a.Order(task2))
}

func TestNeverLogsRegisterHeader(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.DebugLevel)
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		writeErr(w, http.StatusServiceUnavailable, schedapi.CodeUnavailable, "busy")
	}))
	t.Cleanup(srv.Close)
	c, err := New([]string{srv.URL, deadAddr(t)}, WithLogger(zap.New(core)), WithRetry(2, time.Millisecond))
	require.NoError(t, err)
	_, err = c.Register(t.Context(), schedapi.RegisterRequest{
		Peer: schedapi.Peer{ID: "p1"}, URL: "http://o/x",
		Header: http.Header{"Authorization": {"Bearer top-secret-token"}},
	})
	require.Error(t, err)
	require.NotContains(t, err.Error(), "top-secret-token")
	require.Positive(t, logs.Len(), "failures are logged at debug level")
	for _, e := range logs.All() {
		require.NotContains(t, fmt.Sprint(e.Message, e.ContextMap()), "top-secret-token")
	}
	require.Equal(t, int32(2), hits.Load())
}

func TestAPIErrorIsNotConfusedWithOthers(t *testing.T) {
	t.Parallel()
	err := fmt.Errorf("wrap: %w", &APIError{StatusCode: http.StatusNotFound, Code: schedapi.CodeTaskNotFound})
	require.ErrorIs(t, err, ErrTaskNotFound)
	require.False(t, errors.Is(err, ErrUnreachable))
	require.Equal(t, "wrap: supernode: 404 TASK_NOT_FOUND: Not Found", err.Error())
}

// The client presents its cluster token on every call, and a supernode's
// refusal is ErrUnauthenticated, not retried and not taken for an outage.
func TestClusterToken(t *testing.T) {
	t.Parallel()
	keys := clusterauth.MustParse("schedclient-test-token-0123456789")
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if !keys.Valid(r) {
			w.Header().Set("WWW-Authenticate", clusterauth.Challenge)
			w.WriteHeader(http.StatusUnauthorized)
			_ = json.NewEncoder(w).Encode(schedapi.Error{Code: schedapi.CodeUnauthenticated, Message: clusterauth.Message})
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	id := taskid.ID("sha256:" + strings.Repeat("b", 64))

	with, err := New([]string{srv.URL}, WithClusterKeys(keys))
	require.NoError(t, err)
	require.NoError(t, with.Leave(t.Context(), id, "p"))

	without, err := New([]string{srv.URL})
	require.NoError(t, err)
	before := calls.Load()
	err = without.Leave(t.Context(), id, "p")
	require.ErrorIs(t, err, ErrUnauthenticated)
	require.NotErrorIs(t, err, ErrUnreachable)
	require.Contains(t, err.Error(), clusterauth.EnvToken, "the error says what to set")
	require.Equal(t, before+1, calls.Load(), "a refusal is not retried")
}

// An unreachable supernode is named by a typed error, for callers that say
// which one.
func TestUnreachableNamesNode(t *testing.T) {
	t.Parallel()
	dead := deadAddr(t)
	c, err := New([]string{dead}, WithRetry(1, 0))
	require.NoError(t, err)
	_, err = c.Pieces(t.Context(), task1, "p1", 1, 0, schedapi.NoWant)
	var ue *UnreachableError
	require.ErrorAs(t, err, &ue)
	require.Equal(t, dead, ue.Node)
	require.ErrorIs(t, err, ErrUnreachable)
	require.Contains(t, err.Error(), "supernode unreachable "+dead)
}

// A supernode answering 429 or 503 with Retry-After is not asked again
// before then.
func TestRetryAfterHonoured(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
			_ = json.NewEncoder(w).Encode(schedapi.Error{Code: schedapi.CodeUnavailable, Message: "slow down"})
			return
		}
		_ = json.NewEncoder(w).Encode(schedapi.PiecesResponse{})
	}))
	t.Cleanup(srv.Close)
	c, err := New([]string{srv.URL}, WithRetry(3, time.Millisecond))
	require.NoError(t, err)
	start := time.Now()
	_, err = c.Pieces(t.Context(), task1, "p1", 1, 0, schedapi.NoWant)
	require.NoError(t, err)
	require.GreaterOrEqual(t, time.Since(start), time.Second)
	require.Equal(t, int32(2), calls.Load())
}
