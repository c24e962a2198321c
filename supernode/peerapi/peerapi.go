// Package peerapi serves the peer API of pkg/schedapi over net/http: peers
// register for tasks (supernode/task: which creates the task and starts its
// one source fetch when it is new), long-poll for piece assignments, report
// piece results, leave and heartbeat (supernode/scheduler).
//
// This is the edge: every input is validated here, once, before it reaches
// the task owner or the scheduler; task IDs are parsed from the path or
// derived from the register body (schedapi.RegisterRequest.TaskID) and go
// inward as a taskid.ID. Every error is answered as a schedapi.Error by one
// function: malformed input is a 4xx, never a 5xx.
package peerapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/btlink"
	"github.com/damselfly/damselfly/pkg/clusterauth"
	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/redact"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
	"github.com/damselfly/damselfly/supernode/cdn"
	"github.com/damselfly/damselfly/supernode/scheduler"
	"github.com/damselfly/damselfly/supernode/task"
)

// ErrInvalid is wrapped by errors about malformed requests.
var ErrInvalid = errors.New("invalid request")

// DefaultWait is how long a pieces poll waits when it does not say.
const DefaultWait = 10 * time.Second

// Limits on request contents, on top of schedapi.MaxBodyBytes.
const (
	maxURLLen       = 8 << 10
	maxIdentifier   = 1 << 10
	maxResults      = 1 << 10
	maxHeartbeatIDs = 1 << 14
	maxErrorLen     = 1 << 10
)

// Tasks registers peers for tasks (*task.Manager).
type Tasks interface {
	// Register admits the peer, makes sure the task exists and joins the
	// peer to it (task.Manager.Register).
	Register(ctx context.Context, r task.Registration) (schedapi.TaskInfo, error)
	// RetryAfter is how long the origin of a failed task holds requests
	// back.
	RetryAfter(id taskid.ID) time.Duration
}

// Scheduler is the part of the scheduler the members' piece traffic goes
// to.
type Scheduler interface {
	// PollWant long-polls for assignments, the wanted pieces first (see
	// scheduler.Scheduler.PollWant).
	PollWant(ctx context.Context, taskID taskid.ID, peerID string, max int, want schedapi.Want) (schedapi.PiecesResponse, error)
	// SetWant changes what the peer's parked polls ask for.
	SetWant(ctx context.Context, taskID taskid.ID, peerID string, max int, want schedapi.Want) error
	Report(ctx context.Context, taskID taskid.ID, peerID string, results []schedapi.PieceResult) error
	Leave(ctx context.Context, taskID taskid.ID, peerID string) error
	Heartbeat(ctx context.Context, peerID, addr string, tasks []taskid.ID) (unknown []taskid.ID, err error)
}

// Option configures a Server.
type Option func(*Server)

// WithLogger sets the logger. The default discards logs.
func WithLogger(l *zap.Logger) Option {
	return func(s *Server) {
		if l != nil {
			s.log = l
		}
	}
}

// WithLimits sets the per-address request rates (default: Config{} with
// its defaults).
func WithLimits(c Config) Option {
	return func(s *Server) { s.limits = c.ApplyDefaults() }
}

// WithHTTPMetrics counts and times every request under a handler label per
// route.
func WithHTTPMetrics(m *httpx.Metrics) Option {
	return func(s *Server) { s.metrics = m }
}

// Server serves the peer API. Build it with New.
type Server struct {
	tasks   Tasks
	sched   Scheduler
	keys    clusterauth.Keys
	limits  Config
	log     *zap.Logger
	metrics *httpx.Metrics
}

// New returns a peer API server over the task owner and the scheduler.
// Every request must present one of keys (pkg/clusterauth); with no keys,
// every request is refused.
func New(tasks Tasks, sched Scheduler, keys clusterauth.Keys, opts ...Option) *Server {
	s := &Server{tasks: tasks, sched: sched, keys: keys, limits: Config{}.ApplyDefaults(), log: zap.NewNop()}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Handler returns the routes of pkg/schedapi. Any other path under
// /api/peer/ is answered 404 with a schedapi.Error.
func (s *Server) Handler() http.Handler {
	registers := newClientLimits(s.limits.RegisterRate, s.limits.RegisterBurst)
	polls := newClientLimits(s.limits.PollRate, s.limits.PollBurst)
	mux := http.NewServeMux()
	mux.Handle(schedapi.RouteRegister, s.wrap("register", s.limited(registers, s.register)))
	mux.Handle(schedapi.RoutePieces, s.wrap("pieces", s.limited(polls, s.pieces)))
	mux.Handle(schedapi.RouteWant, s.wrap("want", s.limited(polls, s.want)))
	mux.Handle(schedapi.RouteReport, s.wrap("report", s.report))
	mux.Handle(schedapi.RouteLeave, s.wrap("leave", s.leave))
	mux.Handle(schedapi.RouteHeartbeat, s.wrap("heartbeat", s.heartbeat))
	mux.Handle("/", s.wrap("other", func(w http.ResponseWriter, r *http.Request) error {
		return &apiError{status: http.StatusNotFound, code: schedapi.CodeInvalid, msg: "no such route"}
	}))
	return mux
}

// handlerFunc is a handler that returns its error for wrap to answer.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// wrap turns h into an http.Handler that answers h's error, and a panic, as
// a schedapi.Error.
func (s *Server) wrap(name string, h handlerFunc) http.Handler {
	return s.metrics.Instrument(name, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				s.writeError(w, r, fmt.Errorf("panic in %s handler: %v", name, p))
			}
		}()
		if !s.keys.Valid(r) {
			w.Header().Set("WWW-Authenticate", clusterauth.Challenge)
			s.writeError(w, r, errUnauthenticated)
			return
		}
		if err := h(w, r); err != nil {
			s.writeError(w, r, err)
		}
	}), s.log)
}

// apiError is an answer decided by a handler.
type apiError struct {
	status int
	code   schedapi.ErrorCode
	msg    string
}

func (e *apiError) Error() string { return e.msg }

var errUnauthenticated = &apiError{status: http.StatusUnauthorized, code: schedapi.CodeUnauthenticated, msg: clusterauth.Message}

// writeError maps err to a status and a schedapi.Error. This is the only
// place that does.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var (
		ae  *apiError
		mbe *http.MaxBytesError
	)
	status, code, msg := http.StatusInternalServerError, schedapi.CodeInternal, "internal error"
	switch {
	case errors.As(err, &ae):
		status, code, msg = ae.status, ae.code, ae.msg
	case errors.As(err, &mbe):
		status, code, msg = http.StatusRequestEntityTooLarge, schedapi.CodeInvalid, fmt.Sprintf("request body larger than %d bytes", mbe.Limit)
	case errors.Is(err, scheduler.ErrTaskNotFound):
		status, code, msg = http.StatusNotFound, schedapi.CodeTaskNotFound, err.Error()
	case errors.Is(err, scheduler.ErrPeerNotFound):
		status, code, msg = http.StatusNotFound, schedapi.CodePeerNotFound, err.Error()
	case errors.Is(err, ErrInvalid), errors.Is(err, scheduler.ErrInvalid),
		errors.Is(err, cdn.ErrInvalid), errors.Is(err, taskid.ErrInvalid):
		status, code, msg = http.StatusBadRequest, schedapi.CodeInvalid, err.Error()
	case errors.Is(err, scheduler.ErrLimit):
		status, code, msg = http.StatusServiceUnavailable, schedapi.CodeUnavailable, err.Error()
	case errors.Is(err, scheduler.ErrClosed), errors.Is(err, cdn.ErrClosed):
		status, code, msg = http.StatusServiceUnavailable, schedapi.CodeUnavailable, "supernode is shutting down"
	case r.Context().Err() != nil:
		// The peer hung up; nobody reads this answer.
		status, code, msg = http.StatusServiceUnavailable, schedapi.CodeUnavailable, "request cancelled"
	default:
		s.log.Error("peer api request", zap.String("path", r.URL.Path), zap.Error(err))
	}
	httpx.WriteJSON(w, status, schedapi.Error{Code: code, Message: msg})
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrInvalid)
}

// decode reads one JSON value of at most schedapi.MaxBodyBytes.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, schedapi.MaxBodyBytes))
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		return invalid("decode request body: %v", err)
	}
	if dec.More() {
		return invalid("decode request body: trailing data")
	}
	return nil
}

// checkSourceURL accepts an http(s) URL with a host, or a BitTorrent
// source btlink parses (a magnet link, a torrent+http(s) URL), which the
// CDN fetches as a BitTorrent client.
func checkSourceURL(raw string) error {
	if len(raw) > maxURLLen {
		return invalid("url: longer than %d bytes", maxURLLen)
	}
	if btlink.IsLink(raw) {
		if _, err := btlink.Parse(raw); err != nil {
			// Answered to the requester only; URLs quoted in it are
			// redacted all the same.
			return invalid("url: %s", redact.Error(err))
		}
		return nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return invalid("url: cannot parse")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return invalid("url: scheme must be http or https, or a bittorrent source (magnet:?xt=urn:btih:…, torrent+https://…/x.torrent)")
	}
	if u.Host == "" {
		return invalid("url: no host")
	}
	return nil
}

// checkHeader refuses header names and values that cannot be sent.
func checkHeader(h http.Header) error {
	for k, vs := range h {
		if k == "" {
			return invalid("header: empty name")
		}
		for i := 0; i < len(k); i++ {
			if c := k[i]; c <= ' ' || c >= 0x7f || c == ':' {
				return invalid("header name %q: invalid character", redact.Truncate(k))
			}
		}
		for _, v := range vs {
			for i := 0; i < len(v); i++ {
				if c := v[i]; c == '\r' || c == '\n' || c == 0 {
					// Never echo the value: it may be a credential.
					return invalid("header %q: invalid character in value", redact.Truncate(k))
				}
			}
		}
	}
	return nil
}

// pathIDs validates the {task} and {peer} path values.
func pathIDs(r *http.Request) (taskID taskid.ID, peerID string, err error) {
	peerID = r.PathValue("peer")
	if taskID, err = taskid.Parse(r.PathValue("task")); err != nil {
		return "", "", invalid("task id: %v", err)
	}
	if err := schedapi.ValidatePeerID(peerID); err != nil {
		return "", "", invalid("%v", err)
	}
	return taskID, peerID, nil
}

func (s *Server) register(w http.ResponseWriter, r *http.Request) error {
	var req schedapi.RegisterRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if err := req.Peer.Validate(); err != nil {
		return invalid("%v", err)
	}
	if err := checkSourceURL(req.URL); err != nil {
		return err
	}
	if err := schedapi.ValidateFile(req.URL, req.File); err != nil {
		return invalid("%v", err)
	}
	if err := checkHeader(req.Header); err != nil {
		return err
	}
	if len(req.Identifier) > maxIdentifier {
		return invalid("identifier: longer than %d bytes", maxIdentifier)
	}
	if req.PieceSize < 0 {
		return invalid("pieceSize: negative")
	}
	if req.Size < 0 {
		return invalid("size: negative")
	}
	// The rule the client routed this request by (pkg/schedclient). A file
	// on a URL that is no torrent names no task.
	id, err := req.TaskID()
	if err != nil {
		return invalid("task: %v", err)
	}
	info, err := s.tasks.Register(r.Context(), task.Registration{
		Request: task.Request{TaskID: id, URL: req.URL, File: req.File, Header: req.Header, Digest: digest.Digest(req.Digest), Size: req.Size},
		Peer:    req.Peer, Have: req.Have, PieceSize: req.PieceSize,
	})
	if err != nil {
		return fmt.Errorf("register %s: %w", id, err)
	}
	httpx.WriteJSON(w, http.StatusOK, schedapi.RegisterResponse{TaskInfo: info})
	return nil
}

// pollGrace bounds a second attempt at a poll the scheduler did not take
// before the requested wait ran out (a zero wait, a busy scheduler).
const pollGrace = time.Second

func (s *Server) pieces(w http.ResponseWriter, r *http.Request) error {
	taskID, peerID, err := pathIDs(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	wait := DefaultWait
	if v := q.Get("wait"); v != "" {
		if wait, err = time.ParseDuration(v); err != nil || wait < 0 {
			return invalid("wait %q: must be a non-negative Go duration", redact.Truncate(v))
		}
		wait = min(wait, schedapi.MaxWait)
	}
	maxN, want, err := pollQuery(q)
	if err != nil {
		return err
	}
	resp, err := s.poll(r.Context(), taskID, peerID, maxN, wait, want)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || r.Context().Err() != nil {
		if err != nil {
			return fmt.Errorf("poll %s: %w", taskID, err)
		}
		httpx.WriteJSON(w, http.StatusOK, s.withRetryAfter(taskID, resp))
		return nil
	}
	// The wait ran out before the scheduler took the poll: try once more.
	resp, err = s.poll(r.Context(), taskID, peerID, maxN, pollGrace, want)
	if errors.Is(err, context.DeadlineExceeded) && r.Context().Err() == nil {
		return &apiError{status: http.StatusServiceUnavailable, code: schedapi.CodeUnavailable, msg: "scheduler busy, poll again"}
	}
	if err != nil {
		return fmt.Errorf("poll %s: %w", taskID, err)
	}
	httpx.WriteJSON(w, http.StatusOK, s.withRetryAfter(taskID, resp))
	return nil
}

// pollQuery parses the max, want and bg query parameters of a poll or a
// want update. A max of 0 is the scheduler's default.
func pollQuery(q url.Values) (maxN int, want schedapi.Want, err error) {
	if v := q.Get("max"); v != "" {
		if maxN, err = strconv.Atoi(v); err != nil || maxN < 1 {
			return 0, want, invalid("max %q: must be a positive integer", redact.Truncate(v))
		}
		maxN = min(maxN, schedapi.MaxAssignments)
	}
	want = schedapi.NoWant
	if want.Pieces, err = schedapi.ParseWant(q.Get(schedapi.QueryWant)); err != nil {
		return 0, want, invalid("%v", err)
	}
	if v := q.Get(schedapi.QueryBackground); v != "" {
		if want.Background, err = strconv.Atoi(v); err != nil || want.Background < 0 || len(v) > 3 {
			return 0, want, invalid("%s %q: must be a non-negative integer", schedapi.QueryBackground, redact.Truncate(v))
		}
	}
	return maxN, want, nil
}

// want changes what the peer's parked polls ask for.
func (s *Server) want(w http.ResponseWriter, r *http.Request) error {
	taskID, peerID, err := pathIDs(r)
	if err != nil {
		return err
	}
	maxN, want, err := pollQuery(r.URL.Query())
	if err != nil {
		return err
	}
	if err := s.sched.SetWant(r.Context(), taskID, peerID, maxN, want); err != nil {
		return fmt.Errorf("want %s: %w", taskID, err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// withRetryAfter tells the peers of failed task id how long the origin is
// held back (schedapi.TaskInfo.RetryAfter).
func (s *Server) withRetryAfter(id taskid.ID, resp schedapi.PiecesResponse) schedapi.PiecesResponse {
	if resp.State == schedapi.TaskFailed {
		resp.RetryAfter = s.tasks.RetryAfter(id)
	}
	return resp
}

func (s *Server) poll(ctx context.Context, taskID taskid.ID, peerID string, maxN int, wait time.Duration, want schedapi.Want) (schedapi.PiecesResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	return s.sched.PollWant(ctx, taskID, peerID, maxN, want)
}

func (s *Server) report(w http.ResponseWriter, r *http.Request) error {
	taskID, peerID, err := pathIDs(r)
	if err != nil {
		return err
	}
	var req schedapi.ReportRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if len(req.Results) > maxResults {
		return invalid("results: more than %d", maxResults)
	}
	for i := range req.Results {
		res := &req.Results[i]
		if res.Piece < 0 {
			return invalid("result %d: negative piece", i)
		}
		if err := schedapi.ValidatePeerID(res.From); err != nil {
			return invalid("result %d from: %v", i, err)
		}
		if res.Bytes < 0 || res.Duration < 0 {
			return invalid("result %d: negative bytes or duration", i)
		}
		if len(res.Error) > maxErrorLen {
			res.Error = res.Error[:maxErrorLen]
		}
	}
	if err := s.sched.Report(r.Context(), taskID, peerID, req.Results); err != nil {
		return fmt.Errorf("report %s: %w", taskID, err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) leave(w http.ResponseWriter, r *http.Request) error {
	taskID, peerID, err := pathIDs(r)
	if err != nil {
		return err
	}
	if err := s.sched.Leave(r.Context(), taskID, peerID); err != nil {
		return fmt.Errorf("leave %s: %w", taskID, err)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) heartbeat(w http.ResponseWriter, r *http.Request) error {
	peerID := r.PathValue("peer")
	if err := schedapi.ValidatePeerID(peerID); err != nil {
		return invalid("%v", err)
	}
	var req schedapi.HeartbeatRequest
	if err := decode(w, r, &req); err != nil {
		return err
	}
	if req.Addr != "" {
		if err := schedapi.ValidatePeerAddr(req.Addr); err != nil {
			return invalid("%v", err)
		}
	}
	if len(req.Tasks) > maxHeartbeatIDs {
		return invalid("tasks: more than %d", maxHeartbeatIDs)
	}
	tasks, err := taskid.ParseAll(req.Tasks)
	if err != nil {
		return invalid("tasks: %v", err)
	}
	unknown, err := s.sched.Heartbeat(r.Context(), peerID, req.Addr, tasks)
	if err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	httpx.WriteJSON(w, http.StatusOK, schedapi.HeartbeatResponse{Unknown: taskid.Strings(unknown)})
	return nil
}
