package peer

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/clusterauth"
	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/content/contenttest"
	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/peer/upload"
	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/schedclient"
	"github.com/damselfly/damselfly/pkg/source"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// testPieceSize keeps test content small while still cut in many pieces.
const testPieceSize = 64 << 10

func randomData(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

// holderMode is how a test holder misbehaves.
type holderMode int

const (
	good holderMode = iota
	corrupt
	short       // announces and sends fewer bytes than asked
	cut         // announces the full length, sends half, hangs up
	long        // announces and sends more bytes than asked
	longChunked // no length announced, sends more bytes than asked
	notFound    // 404
	stall       // sends nothing until the client gives up
	gated       // waits until its piece is released
	trickle     // announces the piece, then sends a byte every 10ms
)

// testKeys is the cluster token of every peer in these tests.
var testKeys = clusterauth.MustParse("peer-test-cluster-token-0123456789")

// holder is another peer's upload server, serving data with a behaviour.
type holder struct {
	peer     schedapi.Peer
	requests atomic.Int64
	// requester is the schedapi.HeaderPeer of the last request.
	requester atomic.Value
	mu        sync.Mutex
	gates     map[int64]chan struct{} // by piece offset, for gated
}

func newHolder(t *testing.T, id string, data []byte, mode holderMode) *holder {
	t.Helper()
	h := &holder{gates: map[int64]chan struct{}{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.requests.Add(1)
		h.requester.Store(r.Header.Get(schedapi.HeaderPeer))
		if !testKeys.Valid(r) {
			http.Error(w, "cluster token", http.StatusUnauthorized)
			return
		}
		if !strings.HasPrefix(r.URL.Path, "/upload/v1/tasks/") {
			http.Error(w, "bad path", http.StatusBadRequest)
			return
		}
		rg, err := httpx.ParseRange(r.Header.Get("Range"), int64(len(data)))
		if err != nil {
			http.Error(w, err.Error(), http.StatusRequestedRangeNotSatisfiable)
			return
		}
		body := bytes.Clone(data[rg.Start : rg.Start+rg.Length])
		send := func(b []byte, announce int) {
			w.Header().Set("Content-Range", rg.ContentRange(int64(len(data))))
			if announce >= 0 {
				w.Header().Set("Content-Length", strconv.Itoa(announce))
			}
			w.WriteHeader(http.StatusPartialContent)
			_, _ = w.Write(b)
		}
		switch mode {
		case good:
			send(body, len(body))
		case corrupt:
			body[len(body)/2] ^= 0xff
			send(body, len(body))
		case short:
			send(body[:len(body)-10], len(body)-10)
		case cut:
			send(body[:len(body)/2], len(body))
		case long:
			b := append(body, "0123456789"...)
			send(b, len(b))
		case longChunked:
			w.Header().Set("Content-Range", rg.ContentRange(int64(len(data))))
			w.WriteHeader(http.StatusPartialContent)
			w.(http.Flusher).Flush()
			_, _ = w.Write(append(body, "0123456789"...))
		case notFound:
			http.Error(w, "range not available", http.StatusNotFound)
		case stall:
			<-r.Context().Done()
		case trickle:
			w.Header().Set("Content-Range", rg.ContentRange(int64(len(data))))
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.WriteHeader(http.StatusPartialContent)
			for _, c := range body {
				if _, err := w.Write([]byte{c}); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				select {
				case <-r.Context().Done():
					return
				case <-time.After(10 * time.Millisecond):
				}
			}
		case gated:
			select {
			case <-h.gate(rg.Start):
				send(body, len(body))
			case <-r.Context().Done():
			}
		}
	}))
	t.Cleanup(srv.Close)
	h.peer = schedapi.Peer{ID: id, Addr: strings.TrimPrefix(srv.URL, "http://")}
	return h
}

func (h *holder) gate(off int64) chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	g, ok := h.gates[off]
	if !ok {
		g = make(chan struct{})
		h.gates[off] = g
	}
	return g
}

func (h *holder) release(i int) { close(h.gate(int64(i) * testPieceSize)) }

// deadPeer is a peer address nothing listens on.
func deadPeer(t *testing.T, id string) schedapi.Peer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return schedapi.Peer{ID: id, Addr: addr}
}

// fakeSched is a small supernode speaking pkg/schedapi for one task: it
// hands out the task's pieces in a given order, from holders a policy picks,
// takes failed pieces back and records everything.
type fakeSched struct {
	t      *testing.T
	addr   string
	data   []byte
	taskID taskid.ID
	pieces []digest.Digest
	// order is the order pieces are handed out in (default 0..n-1).
	order []int
	// from picks the holder of a piece's attempt-th assignment.
	from func(piece, attempt int) (schedapi.Peer, bool)
	// contentDigest is announced from the start, unless late is set: then
	// only once every piece was reported (as a CDN still hashing would).
	contentDigest string
	late          bool
	// badVouch makes the succeeded task's PiecesDigest list other pieces.
	badVouch bool
	// failTask makes the task failed from the start.
	failTask string
	// rateLimited is how many more registrations are answered with the
	// task failed and RetryAfter, as a supernode whose origin answers 429.
	rateLimited atomic.Int32
	// forget answers the first pieces poll with PEER_NOT_FOUND.
	forget atomic.Bool
	// unknown is answered to heartbeats.
	unknown atomic.Bool
	// lost makes polls and reports answer TASK_NOT_FOUND until the next
	// registration, as a restarted supernode would (see restart).
	lost atomic.Bool
	// down is how many more requests get their connection closed without
	// an answer, as a supernode that dies would do.
	down atomic.Int32
	// succeeded: the task is succeeded from the start (the CDN holds the
	// whole content), not running; set before the first request.
	succeeded bool

	srv *httptest.Server

	mu        sync.Mutex
	changed   chan struct{}
	assigned  map[int]bool
	done      map[int]bool
	attempts  map[int]int
	reports   []schedapi.PieceResult
	registers []schedapi.RegisterRequest
	leaves    int
	polls     int
	beats     []schedapi.HeartbeatRequest
	// wants are the want lists of the polls, as sent.
	wants []string
	// update is the latest want update (RouteWant) not yet taken by a
	// parked poll; updates counts them; cancelled counts the polls whose
	// client hung up before an answer.
	update    *schedapi.Want
	updates   int
	cancelled int
}

func newFakeSched(t *testing.T, data []byte, from func(piece, attempt int) (schedapi.Peer, bool)) *fakeSched {
	t.Helper()
	f := &fakeSched{
		t:             t,
		data:          data,
		from:          from,
		contentDigest: digest.FromBytes(data).String(),
		changed:       make(chan struct{}),
		assigned:      map[int]bool{},
		done:          map[int]bool{},
		attempts:      map[int]int{},
	}
	n := piece.Count(int64(len(data)), testPieceSize)
	for i := range n {
		off, l := piece.Bounds(i, int64(len(data)), testPieceSize)
		f.pieces = append(f.pieces, piece.Digest(data[off:off+l]))
		f.order = append(f.order, i)
	}
	f.taskID = taskid.ID(strings.Repeat("ab", 32))
	mux := http.NewServeMux()
	mux.HandleFunc(schedapi.RouteRegister, f.dropping(f.register))
	mux.HandleFunc(schedapi.RoutePieces, f.dropping(f.losing(schedapi.CodeTaskNotFound, f.poll)))
	mux.HandleFunc(schedapi.RouteReport, f.dropping(f.losing(schedapi.CodePeerNotFound, f.report)))
	mux.HandleFunc(schedapi.RouteWant, func(w http.ResponseWriter, r *http.Request) {
		wanted, err := schedapi.ParseWant(r.URL.Query().Get(schedapi.QueryWant))
		if err != nil {
			f.t.Errorf("want update with a bad want list: %v", err)
		}
		bg := -1
		if v := r.URL.Query().Get(schedapi.QueryBackground); v != "" {
			bg, _ = strconv.Atoi(v)
		}
		f.mu.Lock()
		f.updates++
		f.update = &schedapi.Want{Pieces: wanted, Background: bg}
		f.wants = append(f.wants, r.URL.Query().Get(schedapi.QueryWant))
		f.notifyLocked()
		f.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc(schedapi.RouteLeave, func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.leaves++
		f.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc(schedapi.RouteHeartbeat, func(w http.ResponseWriter, r *http.Request) {
		var req schedapi.HeartbeatRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		f.mu.Lock()
		f.beats = append(f.beats, req)
		f.mu.Unlock()
		var resp schedapi.HeartbeatResponse
		if f.unknown.Swap(false) {
			resp.Unknown = req.Tasks
		}
		_ = json.NewEncoder(w).Encode(resp)
	})
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	f.addr = strings.TrimPrefix(f.srv.URL, "http://")
	return f
}

// dropping closes the connection of a request while f.down lasts.
func (f *fakeSched) dropping(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		for {
			n := f.down.Load()
			if n <= 0 {
				h(w, r)
				return
			}
			if f.down.CompareAndSwap(n, n-1) {
				break
			}
		}
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			_ = conn.Close()
		}
	}
}

// losing answers code while f.lost is set.
func (f *fakeSched) losing(code schedapi.ErrorCode, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if f.lost.Load() {
			w.WriteHeader(http.StatusNotFound)
			_ = json.NewEncoder(w).Encode(schedapi.Error{Code: code, Message: "unknown"})
			return
		}
		h(w, r)
	}
}

// restart forgets the task's swarm, as a supernode started again (or one
// taking the task over) would: nothing is held or assigned until peers
// register again with what they have.
func (f *fakeSched) restart() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lost.Store(true)
	f.done, f.assigned, f.attempts = map[int]bool{}, map[int]bool{}, map[int]int{}
	f.notifyLocked()
}

// kill stops the supernode: open connections are cut, new ones refused.
func (f *fakeSched) kill() {
	f.srv.CloseClientConnections()
	f.srv.Close()
}

func (f *fakeSched) info() schedapi.TaskInfo {
	state := schedapi.TaskRunning
	if f.succeeded {
		state = schedapi.TaskSucceeded // the CDN holds it all
	}
	info := schedapi.TaskInfo{
		TaskID:     f.taskID.String(),
		State:      state,
		Size:       int64(len(f.data)),
		PieceSize:  testPieceSize,
		PieceCount: len(f.pieces),
	}
	if f.failTask != "" {
		info.State, info.Error = schedapi.TaskFailed, f.failTask
		return info
	}
	all := len(f.done) == len(f.pieces)
	if !f.late || all {
		info.ContentDigest = f.contentDigest
	}
	if f.late && all {
		info.State = schedapi.TaskSucceeded
		info.PiecesDigest = piece.ListDigest(f.pieces).String()
		if f.badVouch {
			info.PiecesDigest = digest.FromString("other pieces").String()
		}
	}
	return info
}

func (f *fakeSched) notifyLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeSched) register(w http.ResponseWriter, r *http.Request) {
	var req schedapi.RegisterRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.registers = append(f.registers, req)
	if f.rateLimited.Add(-1) >= 0 {
		info := f.info()
		info.State, info.Error, info.RetryAfter = schedapi.TaskFailed, "source: unexpected status 429 Too Many Requests", rateLimitedRetryAfter
		_ = json.NewEncoder(w).Encode(schedapi.RegisterResponse{TaskInfo: info})
		return
	}
	f.lost.Store(false)
	if req.Have != nil {
		for _, i := range req.Have.Indices() {
			f.done[i] = true
		}
	}
	_ = json.NewEncoder(w).Encode(schedapi.RegisterResponse{TaskInfo: f.info()})
}

// rateLimitedRetryAfter is the RetryAfter of fakeSched.rateLimited.
const rateLimitedRetryAfter = 300 * time.Millisecond

func (f *fakeSched) poll(w http.ResponseWriter, r *http.Request) {
	if f.forget.Swap(false) {
		w.WriteHeader(http.StatusNotFound)
		_ = json.NewEncoder(w).Encode(schedapi.Error{Code: schedapi.CodePeerNotFound, Message: "register again"})
		return
	}
	limit, _ := strconv.Atoi(r.URL.Query().Get("max"))
	wait, _ := time.ParseDuration(r.URL.Query().Get("wait"))
	wantQ := r.URL.Query().Get(schedapi.QueryWant)
	wanted, err := schedapi.ParseWant(wantQ)
	if err != nil {
		f.t.Errorf("poll with a bad want list %q: %v", wantQ, err)
	}
	bg := -1
	if v := r.URL.Query().Get(schedapi.QueryBackground); v != "" {
		bg, _ = strconv.Atoi(v)
	}
	f.mu.Lock()
	if wantQ != "" {
		f.wants = append(f.wants, wantQ)
	}
	f.mu.Unlock()
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		f.mu.Lock()
		if f.lost.Load() {
			f.mu.Unlock()
			w.WriteHeader(http.StatusNotFound)
			_ = json.NewEncoder(w).Encode(schedapi.Error{Code: schedapi.CodeTaskNotFound, Message: "restarted"})
			return
		}
		f.polls++
		startInfo := f.info()
		if u := f.update; u != nil {
			// A want update for this parked poll.
			f.update = nil
			wanted, bg = u.Pieces, u.Background
		}
		var out []schedapi.Assignment
		// As the supernode does: the wanted pieces first, then at most bg
		// others.
		order := append(slices.Clone(wanted), f.order...)
		isWanted := map[int]bool{}
		for _, i := range wanted {
			isWanted[i] = true
		}
		others := 0
		for k, i := range order {
			if len(out) >= limit || f.failTask != "" {
				break
			}
			if f.done[i] || f.assigned[i] || i >= len(f.pieces) {
				continue
			}
			if k >= len(wanted) && isWanted[i] {
				continue
			}
			if !isWanted[i] {
				if bg >= 0 && others >= bg {
					break
				}
				others++
			}
			from, cdn := f.from(i, f.attempts[i])
			f.attempts[i]++
			f.assigned[i] = true
			off, n := piece.Bounds(i, int64(len(f.data)), testPieceSize)
			out = append(out, schedapi.Assignment{
				Piece: i, Offset: off, Length: n, Digest: f.pieces[i].String(), From: from, FromCDN: cdn,
			})
		}
		changed := f.changed
		f.mu.Unlock()
		if len(out) > 0 || startInfo.State != schedapi.TaskRunning {
			_ = json.NewEncoder(w).Encode(schedapi.PiecesResponse{TaskInfo: startInfo, Assignments: out})
			return
		}
		select {
		case <-changed:
			f.mu.Lock()
			now := f.info()
			f.mu.Unlock()
			if now != startInfo {
				_ = json.NewEncoder(w).Encode(schedapi.PiecesResponse{TaskInfo: now})
				return
			}
		case <-timer.C:
			_ = json.NewEncoder(w).Encode(schedapi.PiecesResponse{TaskInfo: startInfo})
			return
		case <-r.Context().Done():
			f.mu.Lock()
			f.cancelled++
			f.mu.Unlock()
			return
		}
	}
}

func (f *fakeSched) report(w http.ResponseWriter, r *http.Request) {
	var req schedapi.ReportRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, res := range req.Results {
		f.reports = append(f.reports, res)
		delete(f.assigned, res.Piece)
		if res.OK {
			f.done[res.Piece] = true
		}
	}
	f.notifyLocked()
	w.WriteHeader(http.StatusNoContent)
}

func (f *fakeSched) snapshot() (reports []schedapi.PieceResult, registers []schedapi.RegisterRequest, leaves, polls int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]schedapi.PieceResult(nil), f.reports...), append([]schedapi.RegisterRequest(nil), f.registers...), f.leaves, f.polls
}

// fakeSource is a back-to-source client serving data (or failing).
type fakeSource struct {
	data    []byte
	err     error
	fetches atomic.Int64
	headers chan http.Header
}

func (s *fakeSource) Fetch(ctx context.Context, req source.Request) (*source.Response, error) {
	s.fetches.Add(1)
	if s.headers != nil {
		s.headers <- req.Header
	}
	if s.err != nil {
		return nil, s.err
	}
	return &source.Response{Body: io.NopCloser(bytes.NewReader(s.data[req.Offset:])), Size: int64(len(s.data)), Offset: req.Offset}, nil
}

// testEngine builds an engine against a supernode address.
type engineSetup struct {
	// nodes, when set, are the supernodes instead of the one address.
	nodes []string
	cfg   Config
	store content.Store
	opts  []Option
	self  schedapi.Peer
}

func newTestEngine(t *testing.T, schedAddr string, s engineSetup) *Engine {
	t.Helper()
	nodes := s.nodes
	if nodes == nil {
		nodes = []string{schedAddr}
	}
	sc, err := schedclient.New(nodes, schedclient.WithRetry(1, 0), schedclient.WithClusterKeys(testKeys))
	require.NoError(t, err)
	if s.store == nil {
		s.store = contenttest.NewMemory()
	}
	if s.cfg.PollWait == 0 {
		s.cfg.PollWait = 2 * time.Second
	}
	if s.cfg.PieceTimeout == 0 {
		s.cfg.PieceTimeout = 5 * time.Second
	}
	if s.cfg.StallTimeout == 0 {
		s.cfg.StallTimeout = 10 * time.Second
	}
	if s.self.ID == "" {
		s.self = schedapi.Peer{ID: "self", Addr: "127.0.0.1:9"}
	}
	e, err := New(s.cfg, s.store, sc, s.self, s.opts...)
	require.NoError(t, err)
	return e
}

func fmtPieces(rs []schedapi.PieceResult) string {
	var b strings.Builder
	for _, r := range rs {
		fmt.Fprintf(&b, "%d@%s ok=%v %s; ", r.Piece, r.From, r.OK, r.Error)
	}
	return b.String()
}

// readBlob returns the committed blob's bytes.
func readBlob(t *testing.T, store content.Store, d digest.Digest) []byte {
	t.Helper()
	ra, err := store.ReaderAt(t.Context(), d)
	require.NoError(t, err)
	defer ra.Close()
	b := make([]byte, ra.Size())
	_, err = ra.ReadAt(b, 0)
	if err == io.EOF {
		err = nil
	}
	require.NoError(t, err)
	return b
}

// uploadServer runs a real upload.Server for an engine.
type uploadServer struct {
	ln   net.Listener
	addr string
}

func newUploadServer(t *testing.T) *uploadServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	return &uploadServer{ln: ln, addr: ln.Addr().String()}
}

func (u *uploadServer) serve(t *testing.T, e *Engine) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- upload.New(e, testKeys).Run(ctx, u.ln) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
}
