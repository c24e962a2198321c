// Package upload is the piece upload server: it serves byte ranges of a
// task's verified pieces to other peers over HTTP. Peers and the supernode's
// CDN both run one.
//
// Route: GET and HEAD /upload/v1/tasks/{task} (see Path), one byte range per
// request:
//
//   - {task} must be a task ID (taskid.Parse), else 400.
//   - An unknown task is 404 "task not found".
//   - With a Range header (exactly one "bytes=" range), the answer is 206
//     with Content-Range and Content-Length, if every byte of the range
//     belongs to a verified piece, and 404 "range not available" otherwise.
//     A range starting at or past the end of the content, or a suffix of
//     zero bytes, is 416 with "Content-Range: bytes */<size>". A malformed
//     Range header (garbage, several ranges, inverted, overflowing) is also
//     416: a client that sends one gets no content rather than more than it
//     asked for.
//   - While the task's size is unknown only a closed range ("bytes=a-b") can
//     be served; any other request is 400 "range required" (no Range) or
//     416 (an open or suffix range).
//   - Without a Range header the whole content is served (200) only if all
//     of it is verified, else 404 "range not available".
//
// A request may name its requester in the schedapi.HeaderPeer header; with
// WithTransferStart the server reports each content transfer it starts to
// a named requester (the supernode's CDN tells its scheduler).
//
// Nothing unverified is ever sent, but for one exception: a Task that is an
// ArrivingTask (the supernode's CDN) answers a request marked
// schedapi.HeaderArriving for exactly one piece it is still receiving with
// its bytes as they arrive, and the piece's digest in the
// schedapi.TrailerPieceDigest trailer once it is published; the requester
// checks the piece against it. A piece that will not be complete cuts the
// response. Errors that are the client's fault are 4xx;
// the server answers 5xx only for its own failures (a task that cannot be
// opened or read).
package upload

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/damselfly/damselfly/pkg/clusterauth"
	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// Task is one task's bytes as the upload server sees them.
type Task interface {
	io.ReaderAt
	// Size is the content size, -1 while unknown.
	Size() int64
	// Verified reports whether every byte of [off, off+n) belongs to a
	// verified piece.
	Verified(off, n int64) bool
	// Close releases the task: the server holds a Task only while serving
	// one request.
	Close() error
}

// FileTask is a Task whose verified bytes lie in a file the server may send
// straight from the page cache to the connection (sendfile(2), through
// net/http's ReadFrom), instead of copying them through its own buffers.
// The server uses it when a Task implements it and falls back to ReadAt for
// a range FileRange declines.
type FileTask interface {
	Task
	// FileRange checks bytes [off, off+n) of a verified range as ReadAt
	// would before handing any of them out, and returns a reader of exactly
	// those bytes: an *io.LimitedReader of n bytes over a file positioned
	// at off, for sendfile to take, or a reader of bytes the task holds in
	// memory (a piece it has just read and checked). The server reads it
	// to the end or drops it before it calls FileRange again or closes the
	// task, and never calls it concurrently. It returns a nil reader and no
	// error when the range is not to be read this way.
	FileRange(off, n int64) (io.Reader, error)
}

// ArrivingTask is a Task that can serve a piece it is still receiving
// (the supernode's CDN, cut-through), to a request marked
// schedapi.HeaderArriving: its peer takes the piece's digest from the
// schedapi.TrailerPieceDigest trailer and checks the bytes against it.
type ArrivingTask interface {
	Task
	// Arriving returns the piece at [off, off+n), published or still
	// arriving, read until ctx ends; false when the range is not exactly
	// one such piece.
	Arriving(ctx context.Context, off, n int64) (PieceStream, bool)
}

// PieceStream is one piece served to a HeaderArriving request.
type PieceStream interface {
	// Read reads the piece's bytes, waiting for those not yet arrived;
	// it fails if the piece will not be complete.
	io.Reader
	// Ready reports whether the next Read returns at once: the bytes sent
	// so far are flushed to the client only when it does not.
	Ready() bool
	// Digest waits until the piece is published and returns its digest;
	// it fails if the piece will not be.
	Digest(ctx context.Context) (string, error)
}

// Tasks opens tasks by ID; errors wrap ErrNotFound for an unknown task.
type Tasks interface {
	Open(ctx context.Context, taskID taskid.ID) (Task, error)
}

// ErrNotFound is the error Tasks.Open wraps for an unknown task.
var ErrNotFound = errors.New("upload: task not found")

const (
	// RoutePrefix is the path prefix of the upload route; the task ID follows.
	RoutePrefix = "/upload/v1/tasks/"
	// RoutePattern is the net/http ServeMux pattern of the upload route
	// (GET, which also matches HEAD).
	RoutePattern = "GET " + RoutePrefix + "{task}"

	bufSize = 256 << 10
	// fileChunk is the most a FileTask's bytes are sent in one step (one
	// FileRange, so one check of the pieces it covers, and one sendfile)
	// when no limiter applies; with one, steps are bufSize as for reads.
	fileChunk       = 4 << 20
	shutdownTimeout = 5 * time.Second
	// maxPeerIDLen bounds a schedapi.HeaderPeer value passed on.
	maxPeerIDLen = 128
)

// Path returns the URL path serving taskID.
func Path(taskID taskid.ID) string { return RoutePrefix + taskID.String() }

// Option configures a Server.
type Option func(*Server)

// WithLogger sets the logger (default: no logging).
func WithLogger(l *zap.Logger) Option {
	return func(s *Server) {
		if l != nil {
			s.log = l
		}
	}
}

// WithLimiter caps the bytes per second the server sends, over all
// requests. The limiter's burst must be positive; the server waits on it in
// chunks no larger than the burst.
func WithLimiter(l *rate.Limiter) Option {
	return func(s *Server) { s.limiter = l }
}

// WithMetrics records request metrics under the handler label "upload".
func WithMetrics(m *httpx.Metrics) Option {
	return func(s *Server) { s.metrics = m }
}

// TransferStartFunc is told that the server starts sending bytes
// [off, off+n) of a task to the peer that named itself peerID in the
// schedapi.HeaderPeer request header. It runs on the request's goroutine
// before the response header is sent, so it must return quickly.
type TransferStartFunc func(ctx context.Context, taskID taskid.ID, peerID string, off, n int64)

// WithTransferStart calls fn for every GET the server starts answering with
// content to a request naming its peer (schedapi.HeaderPeer). The
// supernode's CDN uses it to tell the scheduler which assignments are under
// way.
func WithTransferStart(fn TransferStartFunc) Option {
	return func(s *Server) { s.started = fn }
}

// Server is the piece upload server.
type Server struct {
	tasks   Tasks
	keys    clusterauth.Keys
	log     *zap.Logger
	limiter *rate.Limiter
	started TransferStartFunc
	metrics *httpx.Metrics
	bufs    sync.Pool
	handler http.Handler
}

// New returns a server of the tasks opened by tasks to the members of the
// cluster: every request must present one of keys (pkg/clusterauth), or it
// is answered 401 before any task is looked at. With no keys every request
// is refused.
func New(tasks Tasks, keys clusterauth.Keys, opts ...Option) *Server {
	s := &Server{tasks: tasks, keys: keys, log: zap.NewNop()}
	for _, o := range opts {
		o(s)
	}
	s.bufs.New = func() any {
		b := make([]byte, bufSize)
		return &b
	}
	mux := http.NewServeMux()
	mux.Handle(RoutePattern, s.wrap(s.serveTask))
	s.handler = s.metrics.Instrument("upload", mux, s.log)
	return s
}

// Handler returns the server's routes, to mount on another mux.
func (s *Server) Handler() http.Handler { return s.handler }

// Run serves on ln until ctx is done, then shuts down, giving requests in
// flight a few seconds to finish. It returns nil after a clean shutdown.
func (s *Server) Run(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          zap.NewStdLog(s.log.Named("http")),
	}
	if err := httpx.Serve(ctx, srv, ln, shutdownTimeout); err != nil {
		return fmt.Errorf("upload server: %w", err)
	}
	return nil
}

// statusError is an error the client is told about with its own status.
type statusError struct {
	code   int
	msg    string
	header http.Header
}

func (e *statusError) Error() string { return fmt.Sprintf("%d %s", e.code, e.msg) }

// streamError is a failure after the response header was sent: the response
// can only be cut short.
type streamError struct{ err error }

func (e *streamError) Error() string { return "stream: " + e.err.Error() }
func (e *streamError) Unwrap() error { return e.err }

// wrap maps a handler's error to the response: the one place where errors
// become statuses.
func (s *Server) wrap(h func(http.ResponseWriter, *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.keys.Valid(r) {
			w.Header().Set("WWW-Authenticate", clusterauth.Challenge)
			http.Error(w, clusterauth.Message, http.StatusUnauthorized)
			return
		}
		err := h(w, r)
		if err == nil {
			return
		}
		var se *statusError
		var stream *streamError
		switch {
		case errors.As(err, &stream):
			// Headers are out; returning without the promised bytes makes
			// net/http drop the connection, so the client sees the cut.
			s.log.Debug("upload cut short", zap.String("path", r.URL.Path), zap.Error(err))
		case errors.As(err, &se):
			for k, v := range se.header {
				w.Header()[k] = v
			}
			http.Error(w, se.msg, se.code)
		case errors.Is(err, ErrNotFound):
			http.Error(w, "task not found", http.StatusNotFound)
		case r.Context().Err() != nil:
			// The client went away; nobody is listening.
		default:
			s.log.Error("upload", zap.String("path", r.URL.Path), zap.Error(err))
			http.Error(w, "internal error", http.StatusInternalServerError)
		}
	})
}

var (
	errRangeNotAvailable = &statusError{code: http.StatusNotFound, msg: "range not available"}
	errRangeRequired     = &statusError{code: http.StatusBadRequest, msg: "range required"}
	errInvalidTask       = &statusError{code: http.StatusBadRequest, msg: "invalid task id"}
)

func rangeError(err error, size int64) *statusError {
	se := &statusError{code: http.StatusRequestedRangeNotSatisfiable, msg: "range not satisfiable"}
	if errors.Is(err, httpx.ErrRangeMalformed) {
		se.msg = "malformed range"
	}
	if size >= 0 {
		se.header = http.Header{"Content-Range": {httpx.UnsatisfiedContentRange(size)}}
	}
	return se
}

func (s *Server) serveTask(w http.ResponseWriter, r *http.Request) error {
	id, err := taskid.Parse(r.PathValue("task"))
	if err != nil {
		return errInvalidTask
	}
	ctx := r.Context()
	t, err := s.tasks.Open(ctx, id)
	if err != nil {
		return fmt.Errorf("open task %s: %w", id, err)
	}
	defer t.Close()

	size := t.Size()
	rangeHeaders := r.Header.Values("Range")
	h := w.Header()
	h.Set("Accept-Ranges", "bytes")
	var rg httpx.Range
	status := http.StatusPartialContent
	switch {
	case len(rangeHeaders) > 1:
		return rangeError(httpx.ErrRangeMalformed, size)
	case len(rangeHeaders) == 1:
		if rg, err = httpx.ParseRange(rangeHeaders[0], size); err != nil {
			return rangeError(err, size)
		}
		h.Set("Content-Range", rg.ContentRange(size))
	case size < 0:
		return errRangeRequired
	default:
		rg = httpx.Range{Start: 0, Length: size}
		status = http.StatusOK
	}
	if r.Header.Get(schedapi.HeaderArriving) == "1" && len(rangeHeaders) == 1 {
		if at, ok := t.(ArrivingTask); ok {
			if ps, ok := at.Arriving(ctx, rg.Start, rg.Length); ok {
				s.serveArriving(w, r, id, rg, ps)
				return nil
			}
		}
	}
	if !t.Verified(rg.Start, rg.Length) {
		h.Del("Content-Range")
		return errRangeNotAvailable
	}
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.FormatInt(rg.Length, 10))
	if r.Method == http.MethodHead {
		w.WriteHeader(status)
		return nil
	}
	if ft, ok := t.(FileTask); ok {
		if done, err := s.sendFile(w, r, ft, id, status, rg); done || err != nil {
			return err
		}
	}
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	buf := *bp
	// Read the first chunk before the header goes out, so that a task that
	// cannot be read is a clean 500 rather than a cut response.
	first := buf[:min(int64(len(buf)), rg.Length)]
	if err := s.readChunk(ctx, t, first, rg.Start); err != nil {
		return fmt.Errorf("task %s: %w", id, err)
	}
	s.transferStarts(r, id, rg)
	w.WriteHeader(status)
	if _, err := w.Write(first); err != nil {
		return &streamError{err: fmt.Errorf("task %s: write: %w", id, err)}
	}
	for off, end := rg.Start+int64(len(first)), rg.Start+rg.Length; off < end; {
		chunk := buf[:min(int64(len(buf)), end-off)]
		if err := s.readChunk(ctx, t, chunk, off); err != nil {
			return &streamError{err: fmt.Errorf("task %s: %w", id, err)}
		}
		if _, err := w.Write(chunk); err != nil {
			return &streamError{err: fmt.Errorf("task %s: write: %w", id, err)}
		}
		off += int64(len(chunk))
	}
	return nil
}

// serveArriving answers a HeaderArriving request with a piece that may
// still be arriving: 206 at once with its Content-Range and no
// Content-Length (a chunked body, to carry the trailer), its bytes as they
// come, then its digest in the TrailerPieceDigest trailer. A piece that
// will not be complete (its read failed) aborts the response: the
// connection is dropped without the body's last chunk, so the client sees
// a broken transfer, never a complete body.
func (s *Server) serveArriving(w http.ResponseWriter, r *http.Request, id taskid.ID, rg httpx.Range, ps PieceStream) {
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Trailer", schedapi.TrailerPieceDigest)
	if r.Method == http.MethodHead {
		w.WriteHeader(http.StatusPartialContent)
		return
	}
	ctx := r.Context()
	s.transferStarts(r, id, rg)
	w.WriteHeader(http.StatusPartialContent)
	rc := http.NewResponseController(w)
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	buf := *bp
	cut := func(err error) {
		s.log.Debug("arriving piece cut", zap.String("path", r.URL.Path), zap.Int64("offset", rg.Start), zap.Error(err))
		panic(http.ErrAbortHandler)
	}
	for left := rg.Length; left > 0; {
		k, err := ps.Read(buf[:min(int64(len(buf)), left)])
		if k > 0 {
			if werr := s.wait(ctx, k); werr != nil {
				cut(werr)
			}
			if _, werr := w.Write(buf[:k]); werr != nil {
				cut(werr)
			}
			// Bytes go out as they arrive, not when a buffer fills: when
			// the next would be waited for.
			if !ps.Ready() {
				_ = rc.Flush()
			}
			left -= int64(k)
		}
		if err != nil && left > 0 {
			cut(err)
		}
	}
	d, err := ps.Digest(ctx)
	if err != nil {
		cut(err)
	}
	h.Set(schedapi.TrailerPieceDigest, d)
}

// transferStarts tells WithTransferStart's function that the range goes
// to the peer the request names.
func (s *Server) transferStarts(r *http.Request, id taskid.ID, rg httpx.Range) {
	if peerID := r.Header.Get(schedapi.HeaderPeer); s.started != nil && peerID != "" && len(peerID) <= maxPeerIDLen {
		s.started(r.Context(), id, peerID, rg.Start, rg.Length)
	}
}

// sendFile answers with rg of t from its file, one FileRange at a time
// (fileChunk, or bufSize steps of the limiter), so that net/http hands the
// bytes to sendfile(2) where the connection allows. It reports done false
// with no error, having sent nothing, when t declines the first step: the
// caller then reads with ReadAt. Like the buffered path, the first step is
// checked before the header goes out, and a later failure cuts the
// response.
func (s *Server) sendFile(w http.ResponseWriter, r *http.Request, t FileTask, id taskid.ID, status int, rg httpx.Range) (bool, error) {
	ctx := r.Context()
	step := int64(fileChunk)
	if s.limited() {
		step = bufSize
	}
	// The limiter is waited on once a step is taken: a step declined
	// takes nothing from it.
	next := func(off, n int64) (io.Reader, error) {
		src, err := t.FileRange(off, n)
		if src == nil || err != nil {
			return nil, err
		}
		if err := s.wait(ctx, int(n)); err != nil {
			return nil, err
		}
		return src, nil
	}
	off, end := rg.Start, rg.Start+rg.Length
	n := min(step, end-off)
	src, err := next(off, n)
	if err != nil {
		return true, fmt.Errorf("task %s: read at %d: %w", id, off, err)
	}
	if src == nil {
		return false, nil
	}
	s.transferStarts(r, id, rg)
	w.WriteHeader(status)
	for {
		k, err := io.Copy(w, src)
		if err == nil && k < n {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return true, &streamError{err: fmt.Errorf("task %s: send from %d: %w", id, off, err)}
		}
		if off += n; off >= end {
			return true, nil
		}
		n = min(step, end-off)
		if src, err = next(off, n); err == nil && src == nil {
			err = errors.New("file range declined mid-response")
		}
		if err != nil {
			return true, &streamError{err: fmt.Errorf("task %s: read at %d: %w", id, off, err)}
		}
	}
}

// readChunk waits on the limiter for len(p) bytes, then fills p from t at
// off.
func (s *Server) readChunk(ctx context.Context, t io.ReaderAt, p []byte, off int64) error {
	if len(p) == 0 {
		return nil
	}
	if err := s.wait(ctx, len(p)); err != nil {
		return err
	}
	n, err := t.ReadAt(p, off)
	if n < len(p) {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("read at %d: %w", off, err)
	}
	return nil
}

// limited reports whether a limiter caps the server's rate.
func (s *Server) limited() bool {
	return s.limiter != nil && s.limiter.Limit() != rate.Inf
}

// wait takes n bytes from the limiter, in steps no larger than its burst.
func (s *Server) wait(ctx context.Context, n int) error {
	if !s.limited() {
		return nil
	}
	step := max(s.limiter.Burst(), 1)
	for n > 0 {
		k := min(n, step)
		if err := s.limiter.WaitN(ctx, k); err != nil {
			return fmt.Errorf("rate limit: %w", err)
		}
		n -= k
	}
	return nil
}
