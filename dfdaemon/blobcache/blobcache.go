// Package blobcache is the node's long-lived cache of content: it runs every
// download of a dfdaemon through the peer engine, keeps the finished ones
// offered to other peers, and keeps the content store under a disk quota.
//
// Lifecycle of a task in the cache:
//
//  1. Acquire (or Open) starts the task's download in the engine, or joins
//     it, and hands out a Lease. The download runs on the cache's own
//     context: a client that hangs up does not stop it, so the content is
//     still cached and others waiting for it still get it.
//  2. While any Lease is held, the task's content is in use and is never
//     evicted.
//  3. A committed task stays registered with the supernode as a seed, so
//     other nodes fetch pieces from this one, until it has not been used
//     locally for SeedTTL (or MaxSeeds more recently used ones push it
//     out). Then the engine leaves it on the supernode; the
//     content stays in the store and a later Acquire seeds it again at once.
//     A download that is not committed and that no Lease has held for
//     SeedTTL (range reads with the engine's prefetch off never complete)
//     is left the same way, and its partial content dropped.
//  4. When the committed content exceeds Quota (checked every CheckInterval
//     and after every commit), the least recently used blobs that no Lease
//     holds are deleted until usage is at most LowWater of the quota. Their
//     tasks are left on the supernode first, so peers stop being sent here
//     for them.
//
// Committed content is checked, not trusted: the store hashes a blob again
// before a read when it was not verified by this run or its file changed
// since; a background scrub re-hashes every blob every ScrubInterval at
// ScrubRate. A blob that fails is removed by the store; the cache then drops
// its tasks (a reader that met it fails, never ending cleanly), and the next
// Acquire downloads it again.
//
// A failed download is dropped at once: the next Acquire starts afresh.
// Blobs committed by an earlier run of the node are counted and evicted
// like the others, but offered to peers only after they are used again.
package blobcache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"syscall"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/peer"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// ErrClosed is returned by Acquire once the cache has stopped.
var ErrClosed = errors.New("blob cache closed")

// engine is what the cache drives: *peer.Engine.
type engine interface {
	Download(ctx context.Context, req peer.Request) (*peer.Download, error)
}

// Cache runs downloads through the engine and keeps the store under its
// quota. It is safe for concurrent use; Run must be running for it to
// evict, and stops it.
type Cache struct {
	cfg     Config
	store   content.Manager
	engine  engine
	logger  *zap.Logger
	metrics *metrics
	kick    chan struct{}

	life context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup // start and watch goroutines

	// checkMu runs one check at a time: a check decides what to evict from
	// its own walk of the store, so two at once would both evict for the
	// same excess.
	checkMu sync.Mutex

	mu       sync.Mutex
	closed   bool
	tasks    map[taskid.ID]*entry
	byDigest map[digest.Digest]map[*entry]struct{}
	evicting map[digest.Digest]chan struct{}
}

// entry is one task the cache holds a Download handle of.
type entry struct {
	id    taskid.ID
	ready chan struct{} // closed once dl or err is set
	dl    *peer.Download
	err   error

	// Guarded by Cache.mu.
	leases    int
	lastUse   time.Time
	committed bool
	digest    digest.Digest
	size      int64
}

// Option configures a Cache.
type Option func(*options)

type options struct {
	logger     *zap.Logger
	registerer prometheus.Registerer
}

// WithLogger sets the logger (default: no-op).
func WithLogger(l *zap.Logger) Option { return func(o *options) { o.logger = l } }

// WithMetrics registers the cache's metrics with reg.
func WithMetrics(reg prometheus.Registerer) Option { return func(o *options) { o.registerer = reg } }

// New returns a cache of the content in store, downloaded by eng. store
// must be the engine's store.
func New(cfg Config, store content.Manager, eng engine, opts ...Option) (*Cache, error) {
	cfg = cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if store == nil || eng == nil {
		return nil, errors.New("blobcache: a store and an engine are required")
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	c := &Cache{
		cfg:      cfg,
		store:    store,
		engine:   eng,
		logger:   o.logger,
		kick:     make(chan struct{}, 1),
		tasks:    make(map[taskid.ID]*entry),
		byDigest: make(map[digest.Digest]map[*entry]struct{}),
		evicting: make(map[digest.Digest]chan struct{}),
	}
	if c.logger == nil {
		c.logger = zap.NewNop()
	}
	c.life, c.stop = context.WithCancel(context.Background())
	m, err := newMetrics(o.registerer, c)
	if err != nil {
		return nil, err
	}
	m.quota.Set(float64(cfg.Quota))
	c.metrics = m
	return c, nil
}

// Lease is a hold on one task: its content is not evicted until Release.
type Lease struct {
	c    *Cache
	e    *entry
	once sync.Once
}

// TaskID returns the task's ID.
func (l *Lease) TaskID() taskid.ID { return l.e.id }

// NewReader returns the content from off on as the engine verifies it (see
// peer.Download.NewReader): it ends with io.EOF only after the whole
// content is verified, and with the download's error if it fails. A reader
// that finds the committed content gone or corrupt fails, and the task is
// dropped so that the next Acquire downloads it again.
func (l *Lease) NewReader(off int64) io.ReadCloser {
	return &checkedReader{ReadCloser: l.e.dl.NewReader(off), c: l.c, e: l.e}
}

// NewRangeReader returns n bytes of the content from off (n < 0: to the
// end, as NewReader); the pieces covering them are fetched first (see
// peer.Download.NewRangeReader). With n >= 0 it ends with io.EOF after the
// n-th byte, each verified against its piece's digest, without waiting for
// the rest of the content.
func (l *Lease) NewRangeReader(off, n int64) io.ReadCloser {
	return &checkedReader{ReadCloser: l.e.dl.NewRangeReader(off, n), c: l.c, e: l.e}
}

// Size returns the content's size, waiting until it is known (see
// peer.Download.Size).
func (l *Lease) Size(ctx context.Context) (int64, error) { return l.e.dl.Size(ctx) }

// checkedReader drops its task when the store no longer has its content.
type checkedReader struct {
	io.ReadCloser
	c *Cache
	e *entry
}

func (r *checkedReader) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if err != nil && errors.Is(err, content.ErrNotFound) {
		r.c.lost(r.e, err)
	}
	return n, err
}

// lost drops e, whose committed content the store no longer has: the
// download handle is closed (the task is left on the supernode) and the
// next Acquire starts afresh.
func (c *Cache) lost(e *entry, cause error) {
	c.mu.Lock()
	dropped := c.dropLocked(e)
	c.mu.Unlock()
	if !dropped {
		return
	}
	c.metrics.lost.Inc()
	c.logger.Warn("cached content lost; it will be downloaded again", zap.Stringer("task", e.id), zap.Error(cause))
	go func() { _ = e.dl.Close() }()
}

// Progress returns the download's byte counts; Size is -1 while unknown.
func (l *Lease) Progress() peer.Progress { return l.e.dl.Progress() }

// Done is closed when the download has finished, successfully or not.
func (l *Lease) Done() <-chan struct{} { return l.e.dl.Done() }

// Wait blocks until the download finishes or ctx ends.
func (l *Lease) Wait(ctx context.Context) (peer.Result, error) { return l.e.dl.Wait(ctx) }

// Release gives the lease back. It is safe to call more than once.
func (l *Lease) Release() { l.once.Do(func() { l.c.release(l.e) }) }

// Acquire starts the download of req, or joins it, and returns a lease on
// it once the engine has taken it on. The download itself does not depend
// on ctx: it goes on when the caller hangs up.
func (c *Cache) Acquire(ctx context.Context, req peer.Request) (*Lease, error) {
	id, err := req.TaskID()
	if err != nil {
		return nil, fmt.Errorf("acquire: %w: %w", peer.ErrInvalid, err)
	}
	d, isDigest := id.Digest()
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		if ch := c.evicting[d]; isDigest && ch != nil {
			c.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		e := c.tasks[id]
		created := e == nil
		if created {
			e = &entry{id: id, ready: make(chan struct{})}
			c.tasks[id] = e
			c.wg.Add(1)
		}
		e.leases++
		e.lastUse = time.Now()
		c.mu.Unlock()

		if created {
			go c.start(e, req)
		}
		select {
		case <-e.ready:
		case <-ctx.Done():
			c.release(e)
			return nil, ctx.Err()
		}
		if e.err != nil {
			c.release(e)
			return nil, e.err
		}
		if !created && failed(e.dl) {
			// A download that already failed is not joined, even before
			// watch has dropped it: this Acquire starts afresh.
			c.mu.Lock()
			dropped := c.dropLocked(e)
			c.mu.Unlock()
			c.release(e)
			if dropped {
				_ = e.dl.Close() // what watch does for a failure it drops
			}
			continue
		}
		return &Lease{c: c, e: e}, nil
	}
}

// failed reports whether dl has ended with an error.
func failed(dl *peer.Download) bool {
	select {
	case <-dl.Done():
		_, err := dl.Wait(context.Background())
		return err != nil
	default:
		return false
	}
}

// Open acquires req and returns n bytes of its content from off (n < 0:
// to the end; see Lease.NewRangeReader); closing the reader releases the
// lease.
func (c *Cache) Open(ctx context.Context, req peer.Request, off, n int64) (io.ReadCloser, error) {
	l, err := c.Acquire(ctx, req)
	if err != nil {
		return nil, err
	}
	return &leaseReader{ReadCloser: l.NewRangeReader(off, n), l: l}, nil
}

type leaseReader struct {
	io.ReadCloser
	l *Lease
}

func (r *leaseReader) Close() error {
	err := r.ReadCloser.Close()
	r.l.Release()
	return err
}

// start hands the task to the engine on the cache's context.
func (c *Cache) start(e *entry, req peer.Request) {
	defer c.wg.Done()
	if req.Size > 0 {
		// Make room first, so that the download does not fill the disk.
		c.checkMu.Lock()
		if err := c.makeRoom(c.life, req.Size); err != nil && c.life.Err() == nil {
			c.logger.Warn("make room for a download", zap.Stringer("task", e.id), zap.Error(err))
		}
		c.checkMu.Unlock()
	}
	dl, err := c.engine.Download(c.life, req)
	c.mu.Lock()
	if err != nil {
		e.err = err
		c.dropLocked(e)
		close(e.ready)
		c.mu.Unlock()
		return
	}
	e.dl = dl
	close(e.ready)
	if c.closed {
		// Shutdown missed this one: it is not in the maps any more.
		c.mu.Unlock()
		_ = dl.Close()
		return
	}
	c.wg.Add(1)
	c.mu.Unlock()
	go c.watch(e)
}

// watch records the outcome of e's download.
func (c *Cache) watch(e *entry) {
	defer c.wg.Done()
	res, err := e.dl.Wait(c.life)
	c.mu.Lock()
	if err != nil {
		dropped := c.dropLocked(e)
		c.mu.Unlock()
		if dropped {
			if errors.Is(err, syscall.ENOSPC) {
				// Evict now; the next request downloads it again.
				c.logger.Warn("download failed: the cache's disk is full; evicting", zap.Stringer("task", e.id), zap.Error(err))
				select {
				case c.kick <- struct{}{}:
				default:
				}
			} else {
				c.logger.Debug("download failed", zap.Stringer("task", e.id), zap.Error(err))
			}
			_ = e.dl.Close()
		}
		return
	}
	if c.tasks[e.id] == e {
		e.committed, e.digest, e.size = true, res.Digest, res.Size
		set := c.byDigest[res.Digest]
		if set == nil {
			set = make(map[*entry]struct{})
			c.byDigest[res.Digest] = set
		}
		set[e] = struct{}{}
	}
	c.mu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// dropLocked removes e from the maps; it reports whether e was still there.
func (c *Cache) dropLocked(e *entry) bool {
	if c.tasks[e.id] != e {
		return false
	}
	delete(c.tasks, e.id)
	if set := c.byDigest[e.digest]; set != nil {
		delete(set, e)
		if len(set) == 0 {
			delete(c.byDigest, e.digest)
		}
	}
	return true
}

func (c *Cache) release(e *entry) {
	c.mu.Lock()
	e.leases--
	e.lastUse = time.Now()
	c.mu.Unlock()
}

// Run checks the quota and the seeds every CheckInterval and after each
// commit until ctx ends; then it drops every task (leaving them on the
// supernode) and waits for its goroutines. It returns nil.
func (c *Cache) Run(ctx context.Context) error {
	defer c.shutdown()
	if v, ok := c.store.(verifier); ok {
		scrubDone := make(chan struct{})
		go func() { defer close(scrubDone); c.scrubLoop(ctx, v) }()
		defer func() { <-scrubDone }()
	}
	tick := time.NewTicker(c.cfg.CheckInterval)
	defer tick.Stop()
	c.check(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-c.kick:
		}
		c.check(ctx)
	}
}

func (c *Cache) shutdown() {
	c.mu.Lock()
	c.closed = true
	var all []*entry
	for _, e := range c.tasks {
		all = append(all, e)
	}
	clear(c.tasks)
	clear(c.byDigest)
	c.mu.Unlock()
	c.stop()
	var wg sync.WaitGroup
	for _, e := range all {
		select {
		case <-e.ready:
		default:
			continue // start closes it
		}
		if e.dl != nil {
			wg.Go(func() { _ = e.dl.Close() })
		}
	}
	wg.Wait()
	c.wg.Wait()
}

// Check runs one quota and seed check now. Run calls it on its own; it is
// exported for operators' tools and tests.
func (c *Cache) Check(ctx context.Context) { c.check(ctx) }

func (c *Cache) check(ctx context.Context) {
	c.checkMu.Lock()
	defer c.checkMu.Unlock()
	c.expireSeeds()
	if err := c.enforceQuota(ctx); err != nil && ctx.Err() == nil {
		c.logger.Warn("enforce cache quota", zap.Error(err))
	}
}

// expireSeeds leaves the tasks not used for SeedTTL, and the least
// recently used beyond MaxSeeds; their content stays.
func (c *Cache) expireSeeds() {
	cutoff := time.Now().Add(-c.cfg.SeedTTL)
	var expired, idle []*entry
	seeds := 0
	c.mu.Lock()
	for _, e := range c.tasks {
		if !e.committed {
			// A partial download nobody has read for SeedTTL (range reads
			// with prefetch off never complete): left, its ingest dropped.
			if e.leases == 0 && e.dl != nil && e.lastUse.Before(cutoff) {
				expired = append(expired, e)
			}
			continue
		}
		seeds++
		if e.leases > 0 {
			continue
		}
		if e.lastUse.Before(cutoff) {
			expired = append(expired, e)
		} else {
			idle = append(idle, e)
		}
	}
	if over := seeds - len(expired) - c.cfg.MaxSeeds; over > 0 {
		sort.Slice(idle, func(a, b int) bool { return idle[a].lastUse.Before(idle[b].lastUse) })
		expired = append(expired, idle[:min(over, len(idle))]...)
	}
	for _, e := range expired {
		c.dropLocked(e)
	}
	c.mu.Unlock()
	for _, e := range expired {
		c.logger.Debug("stop seeding", zap.Stringer("task", e.id))
		_ = e.dl.Close()
	}
}

// Seeding returns the IDs of the tasks the cache holds, downloading or
// offered to peers.
func (c *Cache) Seeding() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	ids := make([]string, 0, len(c.tasks))
	for id := range c.tasks {
		ids = append(ids, id.String())
	}
	sort.Strings(ids)
	return ids
}
