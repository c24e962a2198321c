// Package cdn is the supernode's seed. For each task it fetches the content
// from its source exactly once, streaming it into the content store one piece
// at a time, hashes every piece with sha256 and publishes it to the scheduler
// the moment it is stored, so that peers fetch the first pieces while the rest
// is still arriving. Verified content and its piece digests are kept on disk:
// a later task for the same content is served from the cache without asking
// the source again, after a restart too.
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
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/ratelimit"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/source"
	"github.com/damselfly/damselfly/pkg/taskid"
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

// Config tunes the CDN.
type Config struct {
	// FetchTimeout bounds one source fetch, from the first request to the
	// commit of the content. Default 2h.
	FetchTimeout time.Duration `yaml:"fetchTimeout"`
	// MaxSourceSize is the most bytes the CDN takes from one source, in
	// bytes: a source announcing more is refused at once, and a source of
	// unknown length is cut (and the task fails) when it passes it, so an
	// endless body cannot fill the data directory. Default 64 GiB.
	MaxSourceSize int64 `yaml:"maxSourceSize"`
	// MinFreeSpace is the free space, in bytes, the CDN leaves on the data
	// directory's filesystem: a source whose announced size would leave
	// less is refused, and a fetch that gets there fails, so sources
	// together cannot fill the disk. Default 1 GiB.
	MinFreeSpace int64 `yaml:"minFreeSpace"`
	// MinSourceRate is the rate below which a digest task's source is
	// abandoned for the next candidate another member offered, averaged
	// over MinSourceRateWindow. A source slower than that is kept while
	// no other candidate is left. Default 1 MiB/s.
	MinSourceRate ratelimit.Rate `yaml:"minSourceRate"`
	// MinSourceRateWindow is the span MinSourceRate is averaged over, from
	// the first request of a source on. Default 10s.
	MinSourceRateWindow time.Duration `yaml:"minSourceRateWindow"`
	// UploadRate caps the bytes per second the CDN sends to peers, over
	// all its piece uploads, as a network link of that speed would. 0
	// (the default) means unlimited.
	UploadRate ratelimit.Rate `yaml:"uploadRate"`
	// Dir holds piece metadata (meta/<hex>.json) and the content digest of
	// URL tasks (tasks/<task>.json). The binary sets it from its data
	// directory; it is not read from the config file.
	Dir string `yaml:"-"`
}

const (
	// DefaultMaxSourceSize is cdn.maxSourceSize's default, 64 GiB: above
	// the largest image layers and files seen in clusters (model weights
	// of tens of GiB), far below what an endless body would write.
	DefaultMaxSourceSize = 64 << 30
	// DefaultMinFreeSpace is cdn.minFreeSpace's default, 1 GiB: room for
	// the metadata, logs and commits of the fetches in flight.
	DefaultMinFreeSpace = 1 << 30
	// DefaultMinSourceRate is cdn.minSourceRate's default, 1 MiB/s: an
	// origin that slow would keep a 1 GiB layer for a quarter of an hour.
	DefaultMinSourceRate = 1 << 20
)

// ApplyDefaults fills unset fields.
func (c Config) ApplyDefaults() Config {
	if c.FetchTimeout == 0 {
		c.FetchTimeout = 2 * time.Hour
	}
	if c.MaxSourceSize == 0 {
		c.MaxSourceSize = DefaultMaxSourceSize
	}
	if c.MinFreeSpace == 0 {
		c.MinFreeSpace = DefaultMinFreeSpace
	}
	if c.MinSourceRate == 0 {
		c.MinSourceRate = DefaultMinSourceRate
	}
	if c.MinSourceRateWindow == 0 {
		c.MinSourceRateWindow = 10 * time.Second
	}
	return c
}

// Validate reports every problem of the config.
func (c Config) Validate() error {
	var errs []error
	if c.FetchTimeout <= 0 {
		errs = append(errs, fmt.Errorf("cdn.fetchTimeout %s: must be positive", c.FetchTimeout))
	}
	if c.MaxSourceSize <= 0 {
		errs = append(errs, fmt.Errorf("cdn.maxSourceSize %d: must be positive", c.MaxSourceSize))
	}
	if c.MinFreeSpace <= 0 {
		errs = append(errs, fmt.Errorf("cdn.minFreeSpace %d: must be positive", c.MinFreeSpace))
	}
	if c.MinSourceRate < 0 {
		errs = append(errs, fmt.Errorf("cdn.minSourceRate: %d is negative", c.MinSourceRate))
	}
	if c.MinSourceRateWindow <= 0 {
		errs = append(errs, fmt.Errorf("cdn.minSourceRateWindow %s: must be positive", c.MinSourceRateWindow))
	}
	if c.UploadRate < 0 {
		errs = append(errs, fmt.Errorf("cdn.uploadRate: %d is negative (0 means unlimited)", c.UploadRate))
	}
	if c.Dir == "" {
		errs = append(errs, errors.New("cdn dir: must be set"))
	}
	return errors.Join(errs...)
}

// TaskSpec describes a task the CDN adds to the scheduler.
type TaskSpec struct {
	ID string
	// URL is the source URL without userinfo and query, for display.
	URL       string
	PieceSize int64
	// Size is -1 while unknown.
	Size int64
	// ContentDigest is the expected digest of the content, when known.
	ContentDigest digest.Digest
}

// Scheduler is the part of the piece scheduler the CDN drives: it creates
// tasks, publishes pieces as they are stored and settles the task.
type Scheduler interface {
	TaskInfo(ctx context.Context, taskID string) (schedapi.TaskInfo, error)
	AddTask(ctx context.Context, spec TaskSpec) error
	SetSize(ctx context.Context, taskID string, size int64) error
	PublishPiece(ctx context.Context, taskID string, n int, d digest.Digest) error
	Succeed(ctx context.Context, taskID string, size int64, content digest.Digest) error
	Fail(ctx context.Context, taskID string, cause error) error
	RemoveTask(ctx context.Context, taskID string) error
}

// Request asks the CDN to make sure a task exists.
type Request struct {
	// TaskID is a valid task ID (pkg/taskid).
	TaskID string
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
}

// Option configures a CDN.
type Option func(*options)

type options struct {
	log *zap.Logger
	reg prometheus.Registerer
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

// CDN seeds tasks from their sources. Create it with New.
type CDN struct {
	cfg     Config
	store   content.Store
	src     source.Client
	sched   Scheduler
	log     *zap.Logger
	metrics *metrics
	cache   *cache

	group singleflight.Group

	// stopping is closed when Run stops the CDN; work tracks the ensure
	// calls in progress.
	stopping chan struct{}
	work     sync.WaitGroup

	// dropMu serialises dropIfGone: the check that a settled task's
	// content is gone and the removal of the task are one step.
	dropMu sync.Mutex

	mu      sync.Mutex
	closed  bool
	fetches map[string]*fetch // running fetches by task ID
	// sourceBytes counts the bytes read from the source per task, for
	// tasks fetched by this process.
	sourceBytes map[string]int64
	// pending holds the sources offered for a digest task whose fetch is
	// about to start; the fetch takes them over.
	pending map[string]*candidates
	// blamed lists, per digest task, the source URLs whose content failed
	// its digest (at most maxCandidates each).
	blamed map[string][]string
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
	c, err := newCache(cfg.Dir)
	if err != nil {
		return nil, err
	}
	return &CDN{
		cfg:         cfg,
		store:       store,
		src:         src,
		sched:       sched,
		log:         o.log,
		metrics:     m,
		cache:       c,
		stopping:    make(chan struct{}),
		fetches:     make(map[string]*fetch),
		sourceBytes: make(map[string]int64),
		pending:     make(map[string]*candidates),
		blamed:      make(map[string][]string),
	}, nil
}

// Run waits until ctx is done, then stops the CDN: running fetches are
// cancelled (their tasks fail) and Run returns nil once they and every
// Ensure in progress have stopped. Ensure fails with ErrClosed after that.
func (c *CDN) Run(ctx context.Context) error {
	<-ctx.Done()
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
	if info, err := c.sched.TaskInfo(ctx, req.TaskID); err == nil && info.State != schedapi.TaskFailed && !c.dropIfGone(ctx, req.TaskID) {
		return info, nil
	}
	if expected != "" {
		c.offer(req, true)
	}
	ch := c.group.DoChan(req.TaskID, func() (any, error) {
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
		return res.Val.(schedapi.TaskInfo), nil
	}
}

// offer adds req's source to the candidates of the task's running fetch,
// or, with start, to those of the fetch about to start.
func (c *CDN) offer(req Request, start bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cs := c.pending[req.TaskID]
	if f := c.fetches[req.TaskID]; f != nil {
		cs = f.cands
	} else if cs == nil && start && !c.closed {
		cs = &candidates{}
		c.pending[req.TaskID] = cs
	}
	if cs != nil && cs.offer(req) {
		cs.refuse(c.blamed[req.TaskID], errLied)
		c.log.Debug("source offered", zap.String("task", req.TaskID), zap.String("source", redactURL(req.URL)), zap.Int64("size", req.Size))
	}
}

// blame remembers that url's content failed the digest of a task.
func (c *CDN) blame(taskID, url string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.blamed[taskID]
	if slices.Contains(b, url) {
		return
	}
	if len(b) >= maxCandidates {
		b = b[1:]
	}
	c.blamed[taskID] = append(b, url)
	c.log.Warn("source blamed for a digest mismatch: not used for this task again", zap.String("task", taskID), zap.String("source", redactURL(url)))
}

// dropPending forgets the sources offered for a fetch that did not start.
func (c *CDN) dropPending(taskID string) {
	c.mu.Lock()
	delete(c.pending, taskID)
	c.mu.Unlock()
}

// checkRequest validates req and returns the content digest it expects.
func checkRequest(req Request) (digest.Digest, error) {
	if err := taskid.Validate(req.TaskID); err != nil {
		return "", fmt.Errorf("cdn task %w: %w", err, ErrInvalid)
	}
	u, err := url.Parse(req.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("cdn task %s: source url must be http or https: %w", req.TaskID, ErrInvalid)
	}
	if req.Size < 0 {
		return "", fmt.Errorf("cdn task %s: size %d is negative: %w", req.TaskID, req.Size, ErrInvalid)
	}
	expected, byDigest := taskid.Digest(req.TaskID)
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
	log := c.log.With(zap.String("task", req.TaskID), zap.String("url", redactURL(req.URL)))

	hit, err := c.serveCached(ctx, req, expected, log)
	if err != nil {
		return schedapi.TaskInfo{}, err
	}
	if hit {
		c.metrics.cacheHits.Inc()
		return c.sched.TaskInfo(ctx, req.TaskID)
	}
	if err := c.startFetch(ctx, req, expected, log); err != nil {
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
	spec := TaskSpec{ID: req.TaskID, URL: redactURL(req.URL), PieceSize: meta.PieceSize, Size: meta.Size, ContentDigest: d}
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
func (c *CDN) fail(ctx context.Context, taskID string, cause error, log *zap.Logger) error {
	log.Warn("task failed", zap.Error(cause))
	c.metrics.fetches.WithLabelValues("failed").Inc()
	if err := c.sched.Fail(ctx, taskID, cause); err != nil {
		return fmt.Errorf("fail task %s: %w", taskID, err)
	}
	return nil
}

// SourceBytes returns the number of bytes this CDN read from the source for
// a task (0 for a task served from the cache or unknown).
func (c *CDN) SourceBytes(taskID string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f, ok := c.fetches[taskID]; ok {
		return f.read.Load()
	}
	return c.sourceBytes[taskID]
}

// Delete cancels a running fetch of the task, removes the task from the
// scheduler and deletes its cached content and metadata. Content is shared
// by digest: the other tasks served from the same content (the digest task,
// URL tasks that resolved to it) are removed from the scheduler too, and
// fetched again by their next registration. Delete returns an error
// wrapping ErrNotFound when there was nothing to delete.
func (c *CDN) Delete(ctx context.Context, taskID string) error {
	if err := taskid.Validate(taskID); err != nil {
		return fmt.Errorf("delete task: %w: %w", err, ErrInvalid)
	}
	found := false
	c.mu.Lock()
	f := c.fetches[taskID]
	delete(c.pending, taskID)
	delete(c.blamed, taskID)
	c.mu.Unlock()
	if f != nil {
		found = true
		f.cancel()
		select {
		case <-f.done:
		case <-ctx.Done():
			return fmt.Errorf("delete task %s: %w", taskID, ctx.Err())
		}
	}
	if err := c.sched.RemoveTask(ctx, taskID); err == nil {
		found = true
	} else if _, infoErr := c.sched.TaskInfo(ctx, taskID); infoErr == nil {
		// The task is there but could not be removed.
		return fmt.Errorf("delete task %s: %w", taskID, err)
	}
	d, byDigest := taskid.Digest(taskID)
	if !byDigest {
		var ok bool
		d, ok = c.cache.taskDigest(taskID)
		if ok {
			found = true
		}
		if err := c.cache.removeTask(taskID); err != nil {
			return fmt.Errorf("delete task %s: %w", taskID, err)
		}
	}
	if d != "" {
		// Every other task served from this content goes with it.
		others := c.cache.tasksFor(d)
		if !byDigest {
			others = append(others, d.String())
		}
		for _, other := range others {
			if other == taskID {
				continue
			}
			c.mu.Lock()
			_, running := c.fetches[other]
			c.mu.Unlock()
			if running {
				// It is fetching its own copy, not reading this one.
				continue
			}
			if err := c.sched.RemoveTask(ctx, other); err == nil {
				c.log.Info("task sharing deleted content removed", zap.String("task", other), zap.String("deleted", taskID))
			}
			if _, isDigest := taskid.Digest(other); !isDigest {
				if err := c.cache.removeTask(other); err != nil {
					return fmt.Errorf("delete task %s: %w", taskID, err)
				}
			}
		}
		if err := c.store.Delete(ctx, d); err == nil {
			found = true
		} else if !errors.Is(err, content.ErrNotFound) {
			return fmt.Errorf("delete task %s content: %w", taskID, err)
		}
		if err := c.cache.removeMeta(d); err != nil {
			return fmt.Errorf("delete task %s: %w", taskID, err)
		}
	}
	c.mu.Lock()
	delete(c.sourceBytes, taskID)
	c.mu.Unlock()
	if !found {
		return fmt.Errorf("delete task %s: %w", taskID, ErrNotFound)
	}
	c.log.Info("task deleted", zap.String("task", taskID))
	return nil
}

// Forget drops what the CDN holds for a task the scheduler forgot (an idle
// task): a running fetch is cancelled and waited for (within ctx), its
// ingest and, for a URL task, its task record are deleted from disk, and
// the candidate sources and counters kept for the task are dropped from
// memory. Committed content and its piece metadata stay: they are the
// verified cache, shared by digest, that a digest task is served from; a
// forgotten URL task is fetched again by its next registration (and finds
// its content already committed).
// Forget does not call the scheduler, but a fetch it cancels settles its
// task with the scheduler before it stops: call Forget from outside the
// scheduler's event loop (its forget callback should start it on a
// goroutine). Forgetting an unknown task is not an error.
func (c *CDN) Forget(ctx context.Context, taskID string) error {
	if err := taskid.Validate(taskID); err != nil {
		return fmt.Errorf("forget task: %w: %w", err, ErrInvalid)
	}
	c.mu.Lock()
	f := c.fetches[taskID]
	delete(c.pending, taskID)
	delete(c.blamed, taskID)
	c.mu.Unlock()
	if f != nil {
		f.cancel()
		select {
		case <-f.done:
		case <-ctx.Done():
			return fmt.Errorf("forget task %s: %w", taskID, ctx.Err())
		}
	}
	// A URL task's record (which content its URL resolved to) is per task:
	// registrations of endless distinct URLs must not leave a file each.
	if _, byDigest := taskid.Digest(taskID); !byDigest {
		if err := c.cache.removeTask(taskID); err != nil {
			return fmt.Errorf("forget task %s: %w", taskID, err)
		}
	}
	// The fetch removed its ingest as it stopped; one left by an error
	// goes here. An ingest a new fetch holds is left to it.
	if im, ok := c.store.(content.IngestManager); ok {
		err := im.Abort(ctx, taskid.FileName(taskID))
		if err != nil && !errors.Is(err, content.ErrNotFound) && !errors.Is(err, content.ErrUnavailable) {
			return fmt.Errorf("forget task %s: %w", taskID, err)
		}
	}
	c.mu.Lock()
	delete(c.sourceBytes, taskID)
	c.mu.Unlock()
	c.log.Debug("task forgotten", zap.String("task", taskID), zap.Bool("fetchCancelled", f != nil))
	return nil
}

// redactURL returns u without userinfo, query and fragment, for logs and
// display: query strings often carry signatures.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<unparsable url>"
	}
	u.User = nil
	u.RawQuery = ""
	u.ForceQuery = false
	u.Fragment, u.RawFragment = "", ""
	return u.String()
}

// sourceErrorMessage describes a source error for peers and logs without
// the URL's query or userinfo.
func sourceErrorMessage(rawURL string, err error) error {
	var se *source.StatusError
	switch {
	case errors.As(err, &se):
		return fmt.Errorf("source answered %d %s", se.StatusCode, http.StatusText(se.StatusCode))
	case errors.Is(err, source.ErrNotFound):
		return errors.New("source: content not found")
	case errors.Is(err, context.DeadlineExceeded):
		return errors.New("source fetch timed out")
	case errors.Is(err, context.Canceled):
		return errors.New("source fetch cancelled")
	}
	msg := err.Error()
	if red := redactURL(rawURL); red != rawURL {
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

// writeFileAtomic writes data to path through a temporary file and a rename.
// The directory is created when it is missing (an operator may have wiped
// the data directory under a running supernode).
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) //nolint:errcheck // gone after the rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
