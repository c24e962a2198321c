// Package cdn is the supernode's CDN: the cluster's first seed of every task. For each task it fetches the content
// from its source exactly once, streaming it into the content store one piece
// at a time, hashes every piece with sha256 and publishes it to the scheduler
// the moment it is stored, so that peers fetch the first pieces while the rest
// is still arriving. Pieces a peer wants ahead of the stream (Demand) are
// fetched out of order with Range requests next to it, the source still
// sending each byte about once (demand.go). Verified content and its piece digests are kept on disk:
// a later task for the same content is served from the cache without asking
// the source again, after a restart too.
//
// A digest task's sources are candidates its members offer, not the first
// registrant's alone: the fetch moves on from one that fails, lies about the
// size or is too slow (candidates.go, sources.go). No source may send more
// than Config.MaxSourceSize; committed content is evicted, least recently
// used first and never while in use, to keep the store under Config.Quota
// and the disk under its watermarks (space.go). What the CDN holds for a
// task the scheduler forgot is dropped by Forget (forget.go).
//
// Committed content is checked, not trusted: before its first use after a
// start, piece by piece as it is served (once per piece and file), when a
// peer reports it corrupt and by a background scrub (integrity.go,
// scrub.go). Content that fails is
// removed, its tasks dropped and fetched again from a source.
//
// The CDN also serves its own content to peers: it implements the
// upload.Tasks contract of pkg/peer/upload, reading pieces of a fetch in
// progress from the ingest and finished content from the committed blob.
package cdn

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/damselfly/damselfly/pkg/btlink"
	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/redact"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/source"
	"github.com/damselfly/damselfly/pkg/taskid"
	"github.com/damselfly/damselfly/supernode/scheduler"
)

var (
	// ErrInvalid is returned for a malformed request: a bad task ID, URL or
	// a digest that does not name the task.
	ErrInvalid = errors.New("invalid cdn request")
	// ErrNotFound is returned when the CDN has neither a running fetch nor
	// cached content for a task.
	ErrNotFound = errors.New("cdn task not found")
	// ErrClosed is returned by Ensure once Run has stopped the CDN.
	ErrClosed = errors.New("cdn stopped")
)

// Scheduler is the part of the piece scheduler the CDN drives: it creates
// tasks, publishes pieces as they are stored and settles the task.
type Scheduler interface {
	TaskInfo(ctx context.Context, taskID taskid.ID) (schedapi.TaskInfo, error)
	AddTask(ctx context.Context, spec scheduler.TaskSpec) error
	SetSize(ctx context.Context, taskID taskid.ID, size int64) error
	PublishPiece(ctx context.Context, taskID taskid.ID, n int, d digest.Digest) error
	// PieceArriving says the fetch's read of piece n started (n < 0: no
	// piece arrives any more).
	PieceArriving(ctx context.Context, taskID taskid.ID, n int) error
	Succeed(ctx context.Context, taskID taskid.ID, size int64, content digest.Digest) error
	Fail(ctx context.Context, taskID taskid.ID, cause error) error
	RemoveTask(ctx context.Context, taskID taskid.ID) error
}

// Request asks the CDN to make sure a task exists.
type Request struct {
	// TaskID names the task.
	TaskID taskid.ID
	// URL is the source, http or https.
	URL string
	// Header is sent to the source on this task's fetch only. It is kept in
	// memory for the fetch, never logged and never written.
	Header http.Header
	// Digest, when set, is the expected content digest; the task ID must be
	// the task ID of that digest.
	Digest digest.Digest
	// Size, when positive, is the content size the requesting member knows
	// (from a registry's manifest or HEAD). A source of a digest task that
	// announces another size is not used.
	Size int64
	// File is the file of a torrent source (URL a magnet link or a
	// torrent+http(s) URL) to fetch; empty for a single-file torrent.
	File string
}

// Option configures a CDN.
type Option func(*options)

type options struct {
	log      *zap.Logger
	reg      prometheus.Registerer
	torrents TorrentClient
}

// WithLogger sets the logger. The default discards logs.
func WithLogger(l *zap.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.log = l
		}
	}
}

// WithMetrics registers the CDN's metrics with reg.
func WithMetrics(reg prometheus.Registerer) Option {
	return func(o *options) { o.reg = reg }
}

// CDN fetches tasks from their sources and seeds them to peers. Create it with New.
type CDN struct {
	cfg     Config
	store   content.Store
	src     source.Client
	sched   Scheduler
	log     *zap.Logger
	metrics *metrics
	cache   *cache
	// torrents fetches magnet and torrent-file sources; nil: none.
	torrents TorrentClient

	group singleflight.Group

	// stopping is closed when Run stops the CDN; work tracks the ensure
	// calls in progress.
	stopping chan struct{}
	work     sync.WaitGroup

	// dropMu serialises dropIfGone: the check that a settled task's
	// content is gone and the removal of the task are one step.
	dropMu sync.Mutex

	// holds keeps rate-limited tasks from being fetched again too soon.
	holds retryHolds

	mu      sync.Mutex
	closed  bool
	fetches map[taskid.ID]*fetch // running fetches by task ID
	// sourceBytes counts the bytes read from the source per task, for
	// tasks fetched by this process.
	sourceBytes map[taskid.ID]int64
	// pending holds the sources offered for a digest task whose fetch is
	// about to start; the fetch takes them over.
	pending map[taskid.ID]*candidates
	// blamed lists, per digest task, the source URLs whose content failed
	// its digest (at most maxCandidates each).
	blamed map[taskid.ID][]string
	// dmu guards demandable, demandQueue, demandRunning and every
	// fetch.queued (demand.go). It is taken before a fetch's pmu, and never
	// held while calling out.
	dmu sync.Mutex
	// demandable holds the running fetches Demand may add to; demandQueue
	// the fetches with demanded pieces waiting for a request, in the order
	// they came; demandRunning counts the demand requests in flight.
	demandable    map[taskid.ID]*fetch
	demandQueue   []*fetch
	demandRunning int
	// checked holds the piece metadata of committed blobs this process
	// has checked against the blob, and which of their pieces it hashed
	// in which file (integrity.go); reportedAt when a corrupt report last
	// started a check of a blob; uploads counts the upload handles open on
	// each committed blob.
	checked    map[digest.Digest]*checkedBlob
	reportedAt map[digest.Digest]time.Time
	uploads    map[digest.Digest]int
	// held lends uploads the buffers they read a piece into to hash it
	// and send it from memory (handle.fromMemory); recentBytes is the
	// bytes of published pieces fetches keep in memory (fetch.recent).
	held        heldBufs
	recentBytes atomic.Int64

	// checks runs one check of a blob at a time.
	checks singleflight.Group
	// usage is the bytes of committed content; evictMu runs one eviction
	// at a time.
	usage   atomic.Int64
	evictMu sync.Mutex
	// noRoomUntil (unix ns): checkSpace does not evict before it.
	noRoomUntil atomic.Int64
	// bg tracks background work (checks, scrub), cancelled by bgCancel
	// when Run stops.
	bg       sync.WaitGroup
	bgCtx    context.Context
	bgCancel context.CancelFunc
}

// New returns a CDN storing content in store and fetching it with src. It
// creates cfg.Dir when missing.
func New(cfg Config, store content.Store, src source.Client, sched Scheduler, opts ...Option) (*CDN, error) {
	cfg = cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if store == nil || src == nil || sched == nil {
		return nil, errors.New("cdn: store, source and scheduler are required")
	}
	o := options{log: zap.NewNop()}
	for _, opt := range opts {
		opt(&o)
	}
	m, err := newMetrics(o.reg)
	if err != nil {
		return nil, fmt.Errorf("cdn metrics: %w", err)
	}
	c, err := newCache(cfg.Dir, o.log)
	if err != nil {
		return nil, err
	}
	m.quota.Set(float64(cfg.Quota))
	bgCtx, bgCancel := context.WithCancel(context.Background())
	return &CDN{
		cfg:         cfg,
		store:       store,
		src:         src,
		sched:       sched,
		log:         o.log,
		torrents:    o.torrents,
		metrics:     m,
		cache:       c,
		stopping:    make(chan struct{}),
		fetches:     make(map[taskid.ID]*fetch),
		sourceBytes: make(map[taskid.ID]int64),
		demandable:  make(map[taskid.ID]*fetch),
		pending:     make(map[taskid.ID]*candidates),
		blamed:      make(map[taskid.ID][]string),
		checked:     make(map[digest.Digest]*checkedBlob),
		reportedAt:  make(map[digest.Digest]time.Time),
		uploads:     make(map[digest.Digest]int),
		bgCtx:       bgCtx,
		bgCancel:    bgCancel,
	}, nil
}

// Run keeps the store within its quota and watermarks and scrubs it
// (Config.ScrubInterval) until ctx is done, then stops the CDN: running
// fetches and background checks are cancelled (fetching tasks fail) and
// Run returns nil once they and every Ensure in progress have stopped.
// Ensure fails with ErrClosed after that.
func (c *CDN) Run(ctx context.Context) error {
	maintained := make(chan struct{})
	go func() {
		defer close(maintained)
		c.maintain(ctx)
	}()
	<-ctx.Done()
	<-maintained
	c.mu.Lock()
	c.closed = true
	running := make([]*fetch, 0, len(c.fetches))
	for _, f := range c.fetches {
		running = append(running, f)
	}
	c.mu.Unlock()
	close(c.stopping)
	for _, f := range running {
		f.cancel()
	}
	for _, f := range running {
		<-f.done
	}
	c.work.Wait()
	c.bgCancel()
	c.bg.Wait()
	return nil
}

// begin counts one ensure in progress, unless the CDN is stopped.
func (c *CDN) begin() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.work.Add(1)
	return true
}

// Ensure makes sure the task exists in the scheduler and returns its info. A
// task that exists and has not failed is returned as is. Otherwise the task
// is served from the cache when its content is there, or one source fetch is
// started for it, however many callers ask at once. The fetch runs detached
// from ctx, bounded by Config.FetchTimeout; Ensure waits only until the
// source has answered and the task is added to the scheduler. A source that
// refuses the request (404, ...) yields a failed task, not an error.
//
// For a digest task, req's source is offered as a candidate of the fetch
// (see candidates.go), whether Ensure starts the fetch or one is running.
func (c *CDN) Ensure(ctx context.Context, req Request) (schedapi.TaskInfo, error) {
	expected, err := checkRequest(req)
	if err != nil {
		return schedapi.TaskInfo{}, err
	}
	if err := ctx.Err(); err != nil {
		return schedapi.TaskInfo{}, err
	}
	if expected != "" {
		c.offer(req, false)
	}
	if info, err := c.sched.TaskInfo(ctx, req.TaskID); err == nil && info.State == schedapi.TaskFailed && c.holds.left(req.TaskID) > 0 {
		return c.withRetryAfter(req.TaskID, info), nil // the origin is rate-limiting: not yet
	}
	if info, err := c.sched.TaskInfo(ctx, req.TaskID); err == nil && info.State != schedapi.TaskFailed && !c.dropIfGone(ctx, req.TaskID) {
		return info, nil
	}
	if expected != "" {
		c.offer(req, true)
	}
	ch := c.group.DoChan(req.TaskID.String(), func() (any, error) {
		if !c.begin() {
			return nil, ErrClosed
		}
		defer c.work.Done()
		defer c.dropPending(req.TaskID)
		// The work outlives the caller that started it: other callers
		// wait on it, and the fetch it starts runs on. Only Run's stop
		// cuts it short.
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.FetchTimeout)
		defer cancel()
		go func() {
			select {
			case <-c.stopping:
				cancel()
			case <-wctx.Done():
			}
		}()
		return c.ensure(wctx, req, expected)
	})
	select {
	case <-ctx.Done():
		return schedapi.TaskInfo{}, ctx.Err()
	case res := <-ch:
		if res.Err != nil {
			return schedapi.TaskInfo{}, res.Err
		}
		return c.withRetryAfter(req.TaskID, res.Val.(schedapi.TaskInfo)), nil
	}
}

// checkRequest validates req and returns the content digest it expects.
func checkRequest(req Request) (digest.Digest, error) {
	if req.TaskID == "" {
		return "", fmt.Errorf("cdn task: no id: %w", ErrInvalid)
	}
	if btlink.IsLink(req.URL) {
		if _, err := btlink.Parse(req.URL); err != nil {
			return "", fmt.Errorf("cdn task %s: %w: %w", req.TaskID, ErrInvalid, err)
		}
	} else if u, err := url.Parse(req.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("cdn task %s: source url must be http, https, a magnet link or torrent+http(s): %w", req.TaskID, ErrInvalid)
	} else if req.File != "" {
		return "", fmt.Errorf("cdn task %s: a file is for torrent sources: %w", req.TaskID, ErrInvalid)
	}
	if req.Size < 0 {
		return "", fmt.Errorf("cdn task %s: size %d is negative: %w", req.TaskID, req.Size, ErrInvalid)
	}
	expected, byDigest := req.TaskID.Digest()
	if req.Digest != "" && (!byDigest || req.Digest != expected) {
		return "", fmt.Errorf("cdn task %s: digest %q does not name the task: %w", req.TaskID, req.Digest, ErrInvalid)
	}
	return expected, nil
}

// ensure runs once per task at a time (singleflight) on a detached context.
func (c *CDN) ensure(ctx context.Context, req Request, expected digest.Digest) (schedapi.TaskInfo, error) {
	// A fetch may have finished or started between the caller's check and
	// this call.
	c.mu.Lock()
	_, running := c.fetches[req.TaskID]
	c.mu.Unlock()
	if info, err := c.sched.TaskInfo(ctx, req.TaskID); err == nil && (running || (info.State != schedapi.TaskFailed && !c.dropIfGone(ctx, req.TaskID))) {
		return info, nil
	}
	log := c.log.With(zap.Stringer("task", req.TaskID), zap.String("url", redact.URL(req.URL)))

	hit, err := c.serveCached(ctx, req, expected, log)
	if err != nil {
		return schedapi.TaskInfo{}, err
	}
	if hit {
		c.metrics.cacheHits.Inc()
		return c.sched.TaskInfo(ctx, req.TaskID)
	}
	start := c.startFetch
	if btlink.IsLink(req.URL) {
		start = c.startTorrent
	}
	if err := start(ctx, req, expected, log); err != nil {
		return schedapi.TaskInfo{}, err
	}
	return c.sched.TaskInfo(ctx, req.TaskID)
}

// serveCached adds the task with every piece published and settled when its
// content is in the store. It reports whether it did.
func (c *CDN) serveCached(ctx context.Context, req Request, expected digest.Digest, log *zap.Logger) (bool, error) {
	d := expected
	if d == "" {
		var ok bool
		if d, ok = c.cache.taskDigest(req.TaskID); !ok {
			return false, nil
		}
	}
	meta, err := c.metaFor(ctx, d)
	if errors.Is(err, content.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		log.Warn("cached content unreadable, fetching from source", zap.Error(err))
		return false, nil
	}
	spec := scheduler.TaskSpec{ID: req.TaskID, URL: redact.URL(req.URL), PieceSize: meta.PieceSize, Size: meta.Size, ContentDigest: d}
	if err := c.sched.AddTask(ctx, spec); err != nil {
		return false, fmt.Errorf("add cached task %s: %w", req.TaskID, err)
	}
	for n, pd := range meta.Pieces {
		if err := c.sched.PublishPiece(ctx, req.TaskID, n, pd); err != nil {
			return true, c.fail(ctx, req.TaskID, fmt.Errorf("publish cached piece %d: %w", n, err), log)
		}
	}
	if err := c.sched.Succeed(ctx, req.TaskID, meta.Size, d); err != nil {
		return true, fmt.Errorf("settle cached task %s: %w", req.TaskID, err)
	}
	log.Info("task served from cache", zap.Stringer("digest", d), zap.Int64("size", meta.Size))
	return true, nil
}

// fail marks a task failed in the scheduler; the returned error is nil when
// the scheduler took it.
func (c *CDN) fail(ctx context.Context, taskID taskid.ID, cause error, log *zap.Logger) error {
	log.Warn("task failed", zap.Error(cause))
	c.metrics.fetches.WithLabelValues("failed").Inc()
	c.holds.note(taskID, cause)
	if err := c.sched.Fail(ctx, taskID, cause); err != nil {
		return fmt.Errorf("fail task %s: %w", taskID, err)
	}
	return nil
}

// SourceBytes returns the number of bytes of pieces this CDN read from the
// source for a task, by its stream and its demand requests (0 for a task
// served from the cache or unknown). Bytes of a piece a broken or skipped
// transfer left unfinished are not counted; the cdn's source bytes metric
// counts them.
func (c *CDN) SourceBytes(taskID taskid.ID) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f, ok := c.fetches[taskID]; ok {
		return f.read.Load()
	}
	return c.sourceBytes[taskID]
}

// sourceErrorMessage describes a source error for peers and logs without
// the URL's query or userinfo.
func sourceErrorMessage(rawURL string, err error) error {
	var se *source.StatusError
	switch {
	case errors.As(err, &se):
		return &described{msg: fmt.Sprintf("source answered %d %s", se.StatusCode, http.StatusText(se.StatusCode)), err: se}
	case errors.Is(err, source.ErrNotFound):
		return errors.New("source: content not found")
	case errors.Is(err, context.DeadlineExceeded):
		return errors.New("source fetch timed out")
	case errors.Is(err, context.Canceled):
		return errors.New("source fetch cancelled")
	}
	msg := err.Error()
	if red := redact.URL(rawURL); red != rawURL {
		msg = strings.ReplaceAll(msg, rawURL, red)
		if u, perr := url.Parse(rawURL); perr == nil {
			msg = strings.ReplaceAll(msg, u.String(), red)
			if u.RawQuery != "" {
				msg = strings.ReplaceAll(msg, u.RawQuery, "…")
			}
		}
	}
	return fmt.Errorf("source fetch: %s", msg)
}
