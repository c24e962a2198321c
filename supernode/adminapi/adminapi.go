// Package adminapi is the supernode's operator API, served with gin under
// /api/v1/:
//
//	GET    /api/v1/tasks      every task: {"tasks": [...]}
//	GET    /api/v1/tasks/:id  one task: state, size, pieces, peers, bytes
//	                          from the source, from the CDN and from peers
//	DELETE /api/v1/tasks/:id  cancel the task's fetch, forget it, delete
//	                          its cached content
//	GET    /api/v1/peers      every known peer: {"peers": [...]}
//	POST   /api/v1/preheats   have the CDN fetch an image's blobs (or a
//	                          file, or a torrent's file) ahead of a
//	                          rollout: 202 with the preheat's status.
//	                          {"type":"image","url":"host/repo:tag",…},
//	                          {"type":"file","url":"https://…",…} or
//	                          {"type":"torrent","url":"magnet:?xt=…" or
//	                          "torrent+https://…/x.torrent","file":"a/b"}
//	                          (supernode/preheat.Request); a malformed
//	                          one is 400 INVALID_ARGUMENT
//	GET    /api/v1/preheats   every preheat remembered, newest first:
//	                          {"preheats": [...]}
//	GET    /api/v1/preheats/:id  a preheat's progress
//
// The preheat routes exist when the handler is built WithPreheater; the
// dashboard (dashboard.go, under /dashboard/) when built WithDashboard.
//
// Every /api/v1/ route requires "Authorization: Bearer <token>"; anything
// else is 401 with "WWW-Authenticate: Bearer". Errors are JSON
// {"code","message"}.
//
// This is the only package of the module that imports gin.
package adminapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/taskid"
	"github.com/damselfly/damselfly/supernode/cdn"
	"github.com/damselfly/damselfly/supernode/preheat"
	"github.com/damselfly/damselfly/supernode/scheduler"
)

// Preheater starts and reports preheats.
type Preheater interface {
	Create(ctx context.Context, req preheat.Request) (preheat.Status, error)
	Get(ctx context.Context, id string) (preheat.Status, error)
}

// maxPreheatBody bounds a preheat request body.
const maxPreheatBody = 1 << 20

// errBadBody marks a request body that is not the JSON a route takes.
var errBadBody = errors.New("invalid request body")

// Scheduler is the part of the scheduler the admin API reads.
type Scheduler interface {
	Tasks(ctx context.Context) ([]scheduler.TaskStatus, error)
	Task(ctx context.Context, taskID taskid.ID) (scheduler.TaskStatus, error)
	Peers(ctx context.Context) ([]scheduler.PeerStatus, error)
}

// Tasks is the part of the task owner (*task.Manager) the admin API drives.
type Tasks interface {
	// Delete cancels the task's fetch, removes it from the scheduler and
	// deletes its cached content.
	Delete(ctx context.Context, taskID taskid.ID) error
	// SourceBytes is how many bytes of the task were read from its source.
	SourceBytes(taskID taskid.ID) int64
}

// Option configures the handler.
type Option func(*options)

type options struct {
	log       *zap.Logger
	metrics   *httpx.Metrics
	preheat   Preheater
	dashboard Dashboard
}

// WithPreheater serves the preheat routes with p.
func WithPreheater(p Preheater) Option {
	return func(o *options) { o.preheat = p }
}

// WithLogger sets the logger. The default discards logs.
func WithLogger(l *zap.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.log = l
		}
	}
}

// WithHTTPMetrics counts and times requests under the handler label "admin".
func WithHTTPMetrics(m *httpx.Metrics) Option {
	return func(o *options) { o.metrics = m }
}

// New returns the admin API handler. Requests must carry token as a bearer
// token; with an empty token every request is refused.
//
// gin keeps its mode in a process-wide setting: New switches it to release
// mode, which only silences gin's debug output.
func New(sched Scheduler, tasks Tasks, token string, opts ...Option) http.Handler {
	o := options{log: zap.NewNop()}
	for _, opt := range opts {
		opt(&o)
	}
	gin.SetMode(gin.ReleaseMode)
	h := &handlers{sched: sched, tasks: tasks, preheat: o.preheat, log: o.log, recent: &recentPreheats{}}

	e := gin.New()
	e.HandleMethodNotAllowed = true
	e.ContextWithFallback = true
	_ = e.SetTrustedProxies(nil)
	e.Use(gin.CustomRecoveryWithWriter(io.Discard, func(c *gin.Context, p any) {
		o.log.Error("admin api panic", zap.String("path", c.Request.URL.Path), zap.Any("panic", p))
		c.AbortWithStatusJSON(http.StatusInternalServerError, errorBody{Code: "INTERNAL", Message: "internal error"})
	}))
	e.Use(h.errors)
	auth := bearerAuth(token)
	// Unknown routes answer 401 before 404, except the dashboard's (which
	// has its own login).
	authOutsideDashboard := func(c *gin.Context) {
		if o.dashboard != nil && isDashboard(c.Request.URL.Path) {
			c.Next()
			return
		}
		auth(c)
	}
	e.NoRoute(authOutsideDashboard, func(c *gin.Context) {
		c.JSON(http.StatusNotFound, errorBody{Code: "NOT_FOUND", Message: "no such route"})
	})
	e.NoMethod(authOutsideDashboard, func(c *gin.Context) {
		c.JSON(http.StatusMethodNotAllowed, errorBody{Code: "METHOD_NOT_ALLOWED", Message: "method not allowed"})
	})
	if o.dashboard != nil {
		h.mountDashboard(e, o.dashboard, token)
	}

	v1 := e.Group("/api/v1", auth)
	v1.GET("/tasks", h.listTasks)
	v1.GET("/tasks/:id", h.getTask)
	v1.DELETE("/tasks/:id", h.deleteTask)
	v1.GET("/peers", h.listPeers)
	if o.preheat != nil {
		v1.POST("/preheats", h.createPreheat)
		v1.GET("/preheats", h.listPreheats)
		v1.GET("/preheats/:id", h.getPreheat)
	}
	return o.metrics.Instrument("admin", e, o.log)
}

// bearerAuth refuses requests without the bearer token. Both sides are
// hashed first, so the comparison takes the same time whatever the length
// of the guess.
func bearerAuth(token string) gin.HandlerFunc {
	want := sha256.Sum256([]byte(token))
	return func(c *gin.Context) {
		got, ok := strings.CutPrefix(c.GetHeader("Authorization"), "Bearer ")
		sum := sha256.Sum256([]byte(got))
		if !ok || token == "" || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
			c.Header("WWW-Authenticate", `Bearer realm="damselfly-supernode"`)
			c.AbortWithStatusJSON(http.StatusUnauthorized, errorBody{Code: "UNAUTHORIZED", Message: "a valid bearer token is required"})
			return
		}
		c.Next()
	}
}

// errorBody is the body of every error answer.
type errorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// errors is the one place where errors become statuses: handlers only call
// c.Error.
func (h *handlers) errors(c *gin.Context) {
	c.Next()
	if len(c.Errors) == 0 || c.Writer.Written() {
		return
	}
	err := c.Errors.Last().Err
	status, body := http.StatusInternalServerError, errorBody{Code: "INTERNAL", Message: "internal error"}
	switch {
	case errors.Is(err, scheduler.ErrTaskNotFound), errors.Is(err, cdn.ErrNotFound), errors.Is(err, preheat.ErrNotFound):
		status, body = http.StatusNotFound, errorBody{Code: "NOT_FOUND", Message: err.Error()}
	case errors.Is(err, scheduler.ErrTaskExists):
		status, body = http.StatusConflict, errorBody{Code: "CONFLICT", Message: err.Error()}
	case errors.Is(err, taskid.ErrInvalid),
		errors.Is(err, scheduler.ErrInvalid), errors.Is(err, cdn.ErrInvalid),
		errors.Is(err, preheat.ErrInvalid), errors.Is(err, errBadBody):
		status, body = http.StatusBadRequest, errorBody{Code: "INVALID_ARGUMENT", Message: err.Error()}
	case errors.Is(err, scheduler.ErrClosed), errors.Is(err, cdn.ErrClosed), errors.Is(err, preheat.ErrClosed):
		status, body = http.StatusServiceUnavailable, errorBody{Code: "UNAVAILABLE", Message: "supernode is shutting down"}
	default:
		h.log.Error("admin api request", zap.String("method", c.Request.Method), zap.String("path", c.Request.URL.Path), zap.Error(err))
	}
	c.JSON(status, body)
}

type handlers struct {
	sched   Scheduler
	tasks   Tasks
	preheat Preheater
	log     *zap.Logger
	// recent remembers the preheats created here, for the dashboard.
	recent *recentPreheats
}

// Task is a task as the admin API shows it.
type Task struct {
	TaskID        string    `json:"taskId"`
	State         string    `json:"state"`
	Size          int64     `json:"size"`
	PieceSize     int64     `json:"pieceSize"`
	PieceCount    int       `json:"pieceCount"`
	Published     int       `json:"published"`
	ContentDigest string    `json:"contentDigest,omitempty"`
	Error         string    `json:"error,omitempty"`
	URL           string    `json:"url,omitempty"`
	CreatedAt     time.Time `json:"createdAt"`
	// BytesFromSource were read from the source by the CDN; BytesFromCDN
	// and BytesFromPeers were sent to peers by the CDN and by other peers.
	BytesFromSource int64 `json:"bytesFromSource"`
	BytesFromCDN    int64 `json:"bytesFromCdn"`
	BytesFromPeers  int64 `json:"bytesFromPeers"`
	// CDNFanout is how many peers the CDN may send one piece to at once in
	// this task now (1: it super-seeds).
	CDNFanout int        `json:"cdnFanout"`
	Peers     []TaskPeer `json:"peers"`
}

// TaskList answers GET /api/v1/tasks.
type TaskList struct {
	Tasks []Task `json:"tasks"`
}

// PeerList answers GET /api/v1/peers.
type PeerList struct {
	Peers []Peer `json:"peers"`
}

// TaskPeer is one peer in one task.
type TaskPeer struct {
	ID        string `json:"id"`
	Addr      string `json:"addr"`
	Pieces    int    `json:"pieces"`
	Struck    bool   `json:"struck"`
	Uploading int    `json:"uploading"`
	// DownloadRate is the download limit the peer reported, bytes/s (0:
	// none).
	DownloadRate int64     `json:"downloadRate"`
	LastSeen     time.Time `json:"lastSeen"`
}

// Peer is a known peer.
type Peer struct {
	ID       string    `json:"id"`
	Addr     string    `json:"addr"`
	Tasks    []string  `json:"tasks"`
	LastSeen time.Time `json:"lastSeen"`
}

func (h *handlers) task(ts scheduler.TaskStatus) Task {
	t := Task{
		TaskID: ts.TaskID, State: string(ts.State), Size: ts.Size, PieceSize: ts.PieceSize,
		PieceCount: ts.PieceCount, Published: ts.Published, ContentDigest: ts.ContentDigest,
		Error: ts.Error, URL: ts.URL, CreatedAt: ts.CreatedAt,
		BytesFromSource: h.tasks.SourceBytes(ts.ID), BytesFromCDN: ts.BytesFromCDN, BytesFromPeers: ts.BytesFromPeers,
		CDNFanout: ts.CDNFanout, Peers: make([]TaskPeer, 0, len(ts.Peers)),
	}
	for _, p := range ts.Peers {
		t.Peers = append(t.Peers, TaskPeer{ID: p.ID, Addr: p.Addr, Pieces: p.Pieces, Struck: p.Struck, Uploading: p.Uploading,
			DownloadRate: p.DownloadRate, LastSeen: p.LastSeen})
	}
	return t
}

func taskParam(c *gin.Context) (taskid.ID, error) {
	return taskid.Parse(c.Param("id"))
}

func (h *handlers) listTasks(c *gin.Context) {
	tasks, err := h.sched.Tasks(c.Request.Context())
	if err != nil {
		_ = c.Error(err)
		return
	}
	out := TaskList{Tasks: make([]Task, 0, len(tasks))}
	for _, ts := range tasks {
		out.Tasks = append(out.Tasks, h.task(ts))
	}
	c.JSON(http.StatusOK, out)
}

func (h *handlers) getTask(c *gin.Context) {
	id, err := taskParam(c)
	if err != nil {
		_ = c.Error(err)
		return
	}
	ts, err := h.sched.Task(c.Request.Context(), id)
	if err != nil {
		_ = c.Error(err)
		return
	}
	c.JSON(http.StatusOK, h.task(ts))
}

func (h *handlers) deleteTask(c *gin.Context) {
	id, err := taskParam(c)
	if err != nil {
		_ = c.Error(err)
		return
	}
	if err := h.tasks.Delete(c.Request.Context(), id); err != nil {
		_ = c.Error(err)
		return
	}
	h.log.Info("task deleted by operator", zap.Stringer("task", id))
	c.Status(http.StatusNoContent)
}

func (h *handlers) listPeers(c *gin.Context) {
	peers, err := h.sched.Peers(c.Request.Context())
	if err != nil {
		_ = c.Error(err)
		return
	}
	out := PeerList{Peers: make([]Peer, 0, len(peers))}
	for _, p := range peers {
		out.Peers = append(out.Peers, Peer{ID: p.ID, Addr: p.Addr, Tasks: p.Tasks, LastSeen: p.LastSeen})
	}
	c.JSON(http.StatusOK, out)
}

// createPreheat starts a preheat. The body may carry registry credentials:
// it is never logged.
func (h *handlers) createPreheat(c *gin.Context) {
	var req preheat.Request
	dec := json.NewDecoder(http.MaxBytesReader(c.Writer, c.Request.Body, maxPreheatBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		_ = c.Error(fmt.Errorf("%w: %s", errBadBody, jsonProblem(err)))
		return
	}
	if dec.More() {
		_ = c.Error(fmt.Errorf("%w: more than one JSON value", errBadBody))
		return
	}
	st, err := h.preheat.Create(c.Request.Context(), req)
	if err != nil {
		_ = c.Error(err)
		return
	}
	h.recent.add(st.ID)
	c.Header("Location", "/api/v1/preheats/"+st.ID)
	c.JSON(http.StatusAccepted, st)
}

// listPreheats answers the preheats the preheater remembers, newest first.
func (h *handlers) listPreheats(c *gin.Context) {
	out, _ := h.preheatList(c.Request.Context())
	c.JSON(http.StatusOK, gin.H{"preheats": out})
}

// preheatList is every preheat the preheater remembers, newest first, or,
// when it cannot list them, those created through this API since the
// start; note says which when it is the latter.
func (h *handlers) preheatList(ctx context.Context) (out []preheat.Status, note string) {
	out = []preheat.Status{}
	if l, ok := h.preheat.(PreheatLister); ok {
		if all, err := l.List(ctx); err == nil {
			return all, ""
		}
	}
	ids := h.recent.list()
	for i := len(ids) - 1; i >= 0; i-- {
		if st, err := h.preheat.Get(ctx, ids[i]); err == nil {
			out = append(out, st)
		}
	}
	return out, "preheats created through this supernode's admin API since it started"
}

func (h *handlers) getPreheat(c *gin.Context) {
	st, err := h.preheat.Get(c.Request.Context(), c.Param("id"))
	if err != nil {
		_ = c.Error(err)
		return
	}
	c.JSON(http.StatusOK, st)
}

// jsonProblem describes a decoding error without quoting the body (which
// may hold a password).
func jsonProblem(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("malformed JSON at offset %d", syn.Offset)
	case errors.As(err, &typ):
		return fmt.Sprintf("field %q: want %s", typ.Field, typ.Type)
	case errors.As(err, &tooBig):
		return fmt.Sprintf("larger than %d bytes", tooBig.Limit)
	case errors.Is(err, io.EOF):
		return "empty body"
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return strings.TrimPrefix(err.Error(), "json: ")
	}
	return "not a JSON object"
}
