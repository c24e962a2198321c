// Package peer is the peer engine: it downloads a task's content piece by
// piece from other peers as the supernode schedules it, verifies every piece
// against the sha256 the supernode gives, stores it in a content.Store,
// reports each result and serves the verified pieces to other peers (it
// implements upload.Tasks). When P2P fails it can fall back to the source.
//
// One Engine serves one peer (dfget for one file, dfdaemon for a node).
// Concurrent Downloads of one task in an Engine share one transfer.
//
// Lifecycle of a task in the engine:
//
//  1. Download registers with the supernode, which answers the task ID and
//     piece size. Content already committed in the store completes at once.
//  2. The engine long-polls for assignments and fetches up to Concurrency
//     pieces at once, each with an HTTP Range GET from the assigned peer's
//     upload server. A piece is written to the ingest only once its sha256
//     matches; every outcome is reported.
//  3. When every piece is verified and the whole-content digest is known,
//     the ingest is committed (the store checks the digest) and the blob is
//     served from then on.
//  4. When the last Download handle of the task is closed, the engine
//     leaves the task on the supernode. Committed content stays in the store.
package peer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/damselfly/damselfly/pkg/backoff"
	"github.com/damselfly/damselfly/pkg/btlink"
	"github.com/damselfly/damselfly/pkg/clusterauth"
	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/peer/upload"
	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/redact"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/schedclient"
	"github.com/damselfly/damselfly/pkg/source"
	"github.com/damselfly/damselfly/pkg/source/httpsource"
	"github.com/damselfly/damselfly/pkg/taskid"
)

var (
	// ErrP2PFailed: the content could not be downloaded through the P2P
	// network (supernode unreachable, task failed on the supernode, no
	// progress for StallTimeout) and going back to the source was not
	// allowed or not possible. The wrapping error says why.
	ErrP2PFailed = errors.New("p2p download failed")
	// ErrDigestMismatch: the content does not hash to the expected digest.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrSizeMismatch: the supernode or the source announces a size other
	// than the expected one (Request.Size), before any byte is readable.
	// From the supernode it is also an ErrP2PFailed (the source may still
	// be tried); from the source it is final.
	ErrSizeMismatch = errors.New("size mismatch")
	// ErrNotFound: the engine has no such task.
	ErrNotFound = errors.New("task not found")
	// ErrClosed: the download was closed before it finished.
	ErrClosed = errors.New("download closed")
	// ErrInvalid: a malformed request.
	ErrInvalid = errors.New("invalid download request")
)

// Engine downloads and serves tasks. It is safe for concurrent use.
type Engine struct {
	cfg        Config
	store      content.Store
	sched      *schedclient.Client
	keys       clusterauth.Keys // sent with piece requests: sched's
	self       schedapi.Peer
	logger     *zap.Logger
	httpClient *http.Client
	// cdnClient fetches pieces from the supernode's own CDN (see
	// WithCDNClient).
	cdnClient  *http.Client
	policyHint string
	limiters   []*rate.Limiter
	source     source.Client
	metrics    *metrics
	// bufs recycles piece buffers (piececache.go).
	bufs *bufPool
	// pcache holds the latest verified pieces (piececache.go).
	pcache *pieceCache
	// paceStale: a whole-content reader that has not moved for this long
	// paces nothing (pace.go).
	paceStale time.Duration
	// lastFetch is when a piece fetch last started (UnixNano), 0 once
	// trimIdle let the buffers go.
	lastFetch atomic.Int64

	mu    sync.Mutex
	tasks map[taskid.ID]*task
}

// Option configures an Engine.
type Option func(*options)

type options struct {
	logger     *zap.Logger
	httpClient *http.Client
	cdnClient  *http.Client
	policyHint string
	limiters   []*rate.Limiter
	source     source.Client
	registerer prometheus.Registerer
}

// WithLogger sets the logger (default: no-op).
func WithLogger(l *zap.Logger) Option {
	return func(o *options) { o.logger = l }
}

// WithHTTPClient sets the HTTP client used to fetch pieces from other peers
// and, unless WithSource is given, from the source. The default ignores
// proxy environment variables for peer traffic.
func WithHTTPClient(c *http.Client) Option {
	return func(o *options) { o.httpClient = c }
}

// WithCDNClient sets the HTTP client that fetches pieces from the CDN of
// the supernode that assigned them (schedapi.Assignment.FromCDN, which only
// the supernode sets). The user chose the supernodes (--node): their CDN is
// reached like the supernode itself, not through the peer policy that
// guards against addresses other peers announce. Default: the client of
// WithHTTPClient.
func WithCDNClient(c *http.Client) Option {
	return func(o *options) { o.cdnClient = c }
}

// WithPolicyHint names how the user allows an address the peer client's
// outbound policy refuses (for example "--peer-allow"): the error that ends
// P2P when every source is refused says it with the address.
func WithPolicyHint(h string) Option {
	return func(o *options) { o.policyHint = h }
}

// WithDownloadLimiter caps the rate of bytes received (from peers and from
// the source). It may be given more than once: every limiter is honoured,
// for example one for this download and one shared with the upload server.
func WithDownloadLimiter(l *rate.Limiter) Option {
	return func(o *options) {
		if l != nil {
			o.limiters = append(o.limiters, l)
		}
	}
}

// WithSource sets the back-to-source client (default: pkg/source/httpsource).
func WithSource(c source.Client) Option {
	return func(o *options) { o.source = c }
}

// WithMetrics registers the engine's metrics with reg.
func WithMetrics(reg prometheus.Registerer) Option {
	return func(o *options) { o.registerer = reg }
}

// New returns an engine storing content in store, scheduled by sched, known
// to other peers as self.
func New(cfg Config, store content.Store, sched *schedclient.Client, self schedapi.Peer, opts ...Option) (*Engine, error) {
	cfg = cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if store == nil || sched == nil {
		return nil, errors.New("peer: a store and a supernode client are required")
	}
	if sched.ClusterKeys().IsZero() {
		return nil, fmt.Errorf("peer: the supernode client has no cluster token: %w", clusterauth.ErrNoToken)
	}
	if err := self.Validate(); err != nil {
		return nil, fmt.Errorf("peer: %w", err)
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	e := &Engine{
		cfg:        cfg,
		store:      store,
		sched:      sched,
		keys:       sched.ClusterKeys(),
		self:       self,
		logger:     o.logger,
		httpClient: o.httpClient,
		cdnClient:  o.cdnClient,
		policyHint: o.policyHint,
		limiters:   o.limiters,
		source:     o.source,
		tasks:      make(map[taskid.ID]*task),
	}
	if e.logger == nil {
		e.logger = zap.NewNop()
	}
	// Concurrency fetches in flight and the piece cache hold buffers at
	// once (a poll may hand out more for a moment: those are left to the
	// GC); with larger pieces (very large content) fewer are kept.
	e.bufs = newBufPool(int64(max(e.cfg.Concurrency, 1))*piece.DefaultSize + defaultCacheBytes)
	e.pcache = newPieceCache(defaultCacheBytes, e.bufs)
	e.paceStale = paceStale
	if e.source == nil {
		sopts := []httpsource.Option{httpsource.WithLogger(e.logger.Named("source"))}
		if e.httpClient != nil {
			sopts = append(sopts, httpsource.WithHTTPClient(e.httpClient))
		}
		e.source = httpsource.New(sopts...)
	}
	if e.httpClient == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.Proxy = nil // peers are reached directly
		tr.MaxIdleConnsPerHost = max(cfg.Concurrency, 2)
		tr.ResponseHeaderTimeout = cfg.PieceTimeout
		e.httpClient = &http.Client{Transport: tr}
	}
	if e.cdnClient == nil {
		e.cdnClient = e.httpClient
	}
	m, err := newMetrics(o.registerer)
	if err != nil {
		return nil, fmt.Errorf("peer: %w", err)
	}
	e.metrics = m
	return e, nil
}

// Self returns the peer the engine registers as.
func (e *Engine) Self() schedapi.Peer { return e.self }

// Request asks for one piece of content.
type Request struct {
	// URL is the source of the content: an http(s) URL, or a BitTorrent
	// source (a magnet link, a torrent+http(s) URL: pkg/btlink), which only
	// the supernode's CDN fetches (see BackToSource).
	URL string
	// File is the file of a torrent to download, as the torrent lists it
	// (schedapi.ValidateFile); empty for a torrent of one file, and for
	// any URL that is no torrent. It names the task with URL.
	File string
	// Header goes to the source only (the supernode's fetch and a
	// back-to-source fetch); it is never logged.
	Header http.Header
	// Digest, when set, is the sha256 of the whole content: it names the
	// task and the result is checked against it.
	Digest digest.Digest
	// Filter lists query keys of URL that do not tell tasks apart.
	Filter []string
	// Identifier separates tasks that share a URL.
	Identifier string
	// Size, when positive, is the expected size of the whole content (for
	// example from the registry's HEAD of a blob). A supernode or a source
	// announcing another size fails the download with ErrSizeMismatch
	// before any byte is readable (after trying the source, when allowed),
	// rather than serving bytes that cannot verify (an error page answered
	// with 200, say).
	Size int64
	// BackToSource allows falling back to the source when P2P fails. It
	// is ignored for a BitTorrent source: the engine has no BitTorrent
	// client (the supernode's CDN is the only one), so a torrent that
	// cannot be had through P2P fails with the P2P error (ErrP2PFailed).
	BackToSource bool
}

func (r Request) validate() error {
	if r.URL == "" {
		return fmt.Errorf("no url: %w", ErrInvalid)
	}
	if err := schedapi.ValidateFile(r.URL, r.File); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if r.torrent() {
		if _, err := btlink.Parse(r.URL); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalid, err)
		}
	}
	if r.Digest != "" {
		if _, err := taskid.ForDigest(r.Digest); err != nil {
			return fmt.Errorf("digest %q: %w", r.Digest, ErrInvalid)
		}
	}
	return nil
}

// TaskID derives the ID of the task r downloads, by the rule the supernode
// applies (taskid.Derive). The engine uses it to share and serve a download
// that went to the source without a supernode; callers that keep downloads
// by task (dfdaemon's blob cache) key them by it.
func (r Request) TaskID() (taskid.ID, error) {
	return taskid.Derive(r.taskSource())
}

func (r Request) taskSource() taskid.Source {
	return taskid.Source{Digest: r.Digest, URL: r.URL, Filter: r.Filter, Identifier: r.Identifier, File: r.File}
}

// torrent reports whether r's source is a torrent, which only the
// supernode's CDN can fetch.
func (r Request) torrent() bool { return btlink.IsLink(r.URL) }

// Download starts downloading req, or joins the download of the same task
// already running in this engine. The download stops (and the task is left
// on the supernode) when the last handle of the task is closed or the ctx
// of every Download call that joined it ends.
func (e *Engine) Download(ctx context.Context, req Request) (*Download, error) {
	if err := req.validate(); err != nil {
		return nil, fmt.Errorf("download: %w", err)
	}
	if req.torrent() {
		// No BitTorrent client here: P2P is the only way (fromSource).
		req.BackToSource = false
	}
	// Content already committed under its digest: seed it, skip the rest.
	var have *content.Info
	if req.Digest != "" {
		if info, err := e.store.Info(ctx, req.Digest); err == nil {
			have = &info
		}
	}
	reg := schedapi.RegisterRequest{
		Peer:       e.self,
		URL:        req.URL,
		File:       req.File,
		Header:     req.Header,
		Digest:     req.Digest.String(),
		Filter:     req.Filter,
		Identifier: req.Identifier,
		Size:       max(req.Size, 0),
	}
	if have != nil {
		reg.Have, reg.PieceSize = allPieces(have.Size)
	}
	resp, regErr := e.sched.Register(ctx, reg)
	var id taskid.ID
	switch {
	case regErr == nil:
		var err error
		if id, err = taskid.Parse(resp.TaskID); err != nil {
			return nil, fmt.Errorf("download: supernode answered a bad task id: %w", err)
		}
	case ctx.Err() != nil:
		return nil, fmt.Errorf("download: %w", ctx.Err())
	case errors.Is(regErr, schedclient.ErrInvalid):
		return nil, fmt.Errorf("download: %w", regErr)
	default:
		var err error
		if id, err = req.TaskID(); err != nil {
			return nil, fmt.Errorf("download: %w: %w", ErrInvalid, err)
		}
		e.logger.Warn("register failed", zap.Stringer("task", id), zap.String("url", redact.URL(req.URL)), zap.Error(regErr))
	}

	t, created, err := e.attach(ctx, id, req)
	if err != nil {
		return nil, fmt.Errorf("download: %w", err)
	}
	d := t.newHandle()
	if created {
		t.start(ctx, resp, regErr, have)
	} else if regErr == nil {
		t.mu.Lock()
		t.registered = true
		t.mu.Unlock()
	}
	// Under t.mu: with ctx already done, Close runs at once on another
	// goroutine and reads stop.
	t.mu.Lock()
	d.stop = context.AfterFunc(ctx, func() { _ = d.Close() })
	t.mu.Unlock()
	return d, nil
}

// allPieces returns the set of every piece of content of size bytes and the
// piece size the supernode cuts it with.
func allPieces(size int64) (*piece.Set, int64) {
	ps := piece.SizeFor(size)
	n := piece.Count(size, ps)
	s := piece.NewSet(n)
	for i := range n {
		s.Add(i)
	}
	return s, ps
}

// attach returns the task id, creating it when the engine has none. A task
// being torn down is waited for, so that its successor starts clean.
func (e *Engine) attach(ctx context.Context, id taskid.ID, req Request) (*task, bool, error) {
	for {
		e.mu.Lock()
		t, ok := e.tasks[id]
		if !ok {
			t = newTask(e, id, req)
			t.refs = 1
			e.tasks[id] = t
			e.mu.Unlock()
			return t, true, nil
		}
		if !t.closing {
			t.refs++
			e.mu.Unlock()
			return t, false, nil
		}
		wait := t.closed
		e.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, false, ctx.Err()
		}
	}
}

// release drops one reference to t and tears it down after the last.
func (e *Engine) release(t *task) {
	e.mu.Lock()
	t.refs--
	if t.refs > 0 {
		e.mu.Unlock()
		return
	}
	t.closing = true
	e.mu.Unlock()

	t.teardown()

	e.mu.Lock()
	if e.tasks[t.id] == t {
		delete(e.tasks, t.id)
	}
	e.mu.Unlock()
	close(t.closed)
}

// Open returns the task for the upload server: it serves the verified
// pieces of a download in progress and, once committed, the whole content.
// A task the engine does not hold, or no longer holds, is ErrNotFound (as
// upload.ErrNotFound).
func (e *Engine) Open(ctx context.Context, taskID taskid.ID) (upload.Task, error) {
	e.mu.Lock()
	t, ok := e.tasks[taskID]
	if ok && t.closing {
		ok = false
	}
	e.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("open task %s: %w", taskID, errNotFoundUpload)
	}
	return &uploadTask{t: t}, nil
}

// Run heartbeats the tasks the engine seeds (downloaded and not left) every
// HeartbeatInterval and registers again for those the supernode no longer
// knows (it restarted, or the peer expired). It returns nil when ctx ends.
//
// Each interval is drawn between 3/4 and 5/4 of HeartbeatInterval, so that
// nodes started together do not heartbeat together.
func (e *Engine) Run(ctx context.Context) error {
	d := e.cfg.HeartbeatInterval
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
			e.heartbeat(ctx)
			e.trimIdle(time.Now())
			timer.Reset(d/4 + backoff.Jitter(d))
		}
	}
}

func (e *Engine) heartbeat(ctx context.Context) {
	seeding := map[string]*task{} // by the ID on the wire
	e.mu.Lock()
	for id, t := range e.tasks {
		if !t.closing && t.seeding() {
			seeding[id.String()] = t
		}
	}
	e.mu.Unlock()
	if len(seeding) == 0 {
		return
	}
	ids := make([]string, 0, len(seeding))
	for id := range seeding {
		ids = append(ids, id)
	}
	resp, err := e.sched.Heartbeat(ctx, e.self.ID, schedapi.HeartbeatRequest{Addr: e.self.Addr, Tasks: ids})
	if err != nil {
		e.logger.Warn("heartbeat", zap.Error(err))
		return
	}
	for _, id := range resp.Unknown {
		t, ok := seeding[id]
		if !ok {
			continue
		}
		if err := t.reregisterSeed(ctx); err != nil {
			e.logger.Warn("register seed again", zap.String("task", id), zap.Error(err))
		}
	}
}
