// Package task owns the supernode's tasks.
//
// A task has two halves: the CDN's (its source candidates, its one origin
// fetch, its stored and checked pieces: supernode/cdn) and the scheduler's
// (its members, its published pieces, who fetches which piece from whom:
// supernode/scheduler). Manager builds both halves wired to each other (the
// CDN adds tasks to the scheduler and publishes pieces as they are stored;
// the scheduler tells the CDN of a task it forgot and of a corrupt piece a
// peer got from the CDN) and is the one object the front ends (peerapi,
// adminapi, preheat, the CDN's upload server) talk to about a task:
//
//   - Register: admit a peer, make sure the task exists (starting its
//     source fetch when it is new), and join the peer to it;
//   - Ensure: make sure the task exists without a member (a preheat);
//   - Task, Delete, SourceBytes, RetryAfter: read and remove tasks;
//   - Open, TransferStarted: serve the CDN's pieces to peers.
//
// The per-peer piece traffic (poll, report, leave, heartbeat) and the admin
// listings go to the scheduler itself, Scheduler, whose single-owner event
// loop stays the only keeper of task, peer and piece state.
//
// Task IDs arrive as taskid.ID: the front ends parse or derive them once.
package task

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/peer/upload"
	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/source"
	"github.com/damselfly/damselfly/pkg/taskid"
	"github.com/damselfly/damselfly/supernode/cdn"
	"github.com/damselfly/damselfly/supernode/scheduler"
)

// Config configures both halves. It is not a YAML section of its own: the
// supernode's config keeps scheduler and cdn as separate sections.
type Config struct {
	Scheduler scheduler.Config
	CDN       cdn.Config
}

// Request asks for a task to exist: its ID, where to fetch it and what the
// requester knows of it (see cdn.Request).
type Request = cdn.Request

// Registration is a peer asking to join a task, creating the task when it
// is new.
type Registration struct {
	Request
	Peer schedapi.Peer
	// Have lists the pieces the peer already holds, cut with PieceSize.
	// They are ignored when the task's piece size is another.
	Have      *piece.Set
	PieceSize int64
}

// Option configures a Manager.
type Option func(*options)

type options struct {
	log      *zap.Logger
	reg      prometheus.Registerer
	torrents cdn.TorrentClient
}

// WithTorrents has the CDN fetch magnet and torrent+http(s) sources with
// tc (see cdn.WithTorrents).
func WithTorrents(tc cdn.TorrentClient) Option {
	return func(o *options) { o.torrents = tc }
}

// WithLogger sets the logger; the CDN logs under "cdn". The default
// discards logs.
func WithLogger(l *zap.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.log = l
		}
	}
}

// WithMetrics registers both halves' metrics with reg.
func WithMetrics(reg prometheus.Registerer) Option {
	return func(o *options) { o.reg = reg }
}

// Manager owns the supernode's tasks. Build it with New and run it with
// Run.
type Manager struct {
	sched *scheduler.Scheduler
	cdn   *cdn.CDN
	log   *zap.Logger

	// stopped is closed once Run's context is done: the scheduler's
	// callbacks into the CDN give up then.
	stopped  chan struct{}
	stopOnce sync.Once
}

// New builds the scheduler, with cdnPeer as the peer under which the CDN
// appears in piece assignments, and the CDN, storing into store and
// fetching from src. The CDN's upload server must report the transfers it
// starts (TransferStarted), or CDN assignments lapse.
func New(cfg Config, cdnPeer schedapi.Peer, store content.Store, src source.Client, opts ...Option) (*Manager, error) {
	o := options{log: zap.NewNop()}
	for _, opt := range opts {
		opt(&o)
	}
	m := &Manager{log: o.log, stopped: make(chan struct{})}
	schedOpts := []scheduler.Option{
		scheduler.WithLogger(o.log), scheduler.WithStartReports(),
		scheduler.WithTaskForgotten(m.forgotten),
		scheduler.WithCDNCorruptReport(func(id taskid.ID, n int) { m.cdn.ReportCorrupt(id, n) }),
		// Wanted pieces the task lacks: the CDN fetches them first. Called
		// on the scheduler's loop, which Run starts after m.cdn is set.
		scheduler.WithDemand(func(id taskid.ID, pieces []int) { m.cdn.Demand(id, pieces) }),
	}
	cdnOpts := []cdn.Option{cdn.WithLogger(o.log.Named("cdn"))}
	if o.torrents != nil {
		cdnOpts = append(cdnOpts, cdn.WithTorrents(o.torrents))
	}
	if o.reg != nil {
		schedOpts = append(schedOpts, scheduler.WithMetrics(o.reg))
		cdnOpts = append(cdnOpts, cdn.WithMetrics(o.reg))
	}
	var err error
	if m.sched, err = scheduler.New(cfg.Scheduler, cdnPeer, schedOpts...); err != nil {
		return nil, err
	}
	if m.cdn, err = cdn.New(cfg.CDN, store, src, m.sched, cdnOpts...); err != nil {
		return nil, err
	}
	return m, nil
}

// Run runs the scheduler and the CDN until ctx is done, then returns nil
// once both have stopped (see scheduler.Scheduler.Run and cdn.CDN.Run).
func (m *Manager) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, m.stop)
	defer stop()
	defer m.stop()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return m.sched.Run(gctx) })
	g.Go(func() error { return m.cdn.Run(gctx) })
	return g.Wait()
}

func (m *Manager) stop() { m.stopOnce.Do(func() { close(m.stopped) }) }

// untilStopped returns a context that ends when Run stops, for work the
// scheduler's callbacks start.
func (m *Manager) untilStopped() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-m.stopped:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// forgotten is told by the scheduler that it forgot an idle task: the CDN
// forgets it too, files included. It runs on its own goroutine.
func (m *Manager) forgotten(id taskid.ID) {
	ctx, cancel := m.untilStopped()
	defer cancel()
	// A registration may have created the task again meanwhile: then it
	// is not the CDN's to forget.
	if _, err := m.sched.TaskInfo(ctx, id); !errors.Is(err, scheduler.ErrTaskNotFound) {
		return
	}
	if err := m.cdn.Forget(ctx, id); err != nil && ctx.Err() == nil {
		m.log.Warn("forget task", zap.Stringer("task", id), zap.Error(err))
	}
}

// Scheduler returns the scheduler, for the piece traffic of members (poll,
// report, leave, heartbeat) and the admin listings.
func (m *Manager) Scheduler() *scheduler.Scheduler { return m.sched }

// Register admits r.Peer to task r.TaskID, makes sure the task exists
// (starting its source fetch when it is new) and joins the peer to it. A
// refused admission (scheduler.ErrLimit) creates nothing. The peer does not
// join a failed task: its info says why it failed and, when the origin is
// holding requests back, for how long.
func (m *Manager) Register(ctx context.Context, r Registration) (schedapi.TaskInfo, error) {
	if err := m.sched.Admit(ctx, r.TaskID, r.Peer.ID); err != nil {
		return schedapi.TaskInfo{}, err
	}
	info, err := m.cdn.Ensure(ctx, r.Request)
	if err != nil || info.State == schedapi.TaskFailed {
		return info, err
	}
	have := r.Have
	if have != nil && r.PieceSize != info.PieceSize {
		// Pieces cut with another size are not these pieces.
		have = nil
	}
	return m.sched.Join(ctx, r.TaskID, r.Peer, have)
}

// Ensure makes sure the task exists, starting its source fetch when it is
// new or failed, without adding a member (see cdn.CDN.Ensure).
func (m *Manager) Ensure(ctx context.Context, req Request) (schedapi.TaskInfo, error) {
	return m.cdn.Ensure(ctx, req)
}

// Task reports a task's progress and members.
func (m *Manager) Task(ctx context.Context, id taskid.ID) (scheduler.TaskStatus, error) {
	return m.sched.Task(ctx, id)
}

// Delete cancels the task's fetch, removes it from the scheduler and
// deletes its cached content (see cdn.CDN.Delete).
func (m *Manager) Delete(ctx context.Context, id taskid.ID) error {
	return m.cdn.Delete(ctx, id)
}

// SourceBytes is how many bytes of the task were read from its source.
func (m *Manager) SourceBytes(id taskid.ID) int64 { return m.cdn.SourceBytes(id) }

// TaskDetail is the scheduler's TaskDetail: piece maps and transfers.
func (m *Manager) TaskDetail(ctx context.Context, id taskid.ID) (scheduler.TaskDetail, error) {
	return m.sched.TaskDetail(ctx, id)
}

// CDNSlots is the scheduler's count of the CDN's upload slots.
func (m *Manager) CDNSlots(ctx context.Context) (scheduler.CDNSlots, error) {
	return m.sched.CDNSlots(ctx)
}

// CDNUsage is the CDN's disk use, quota and fetches in flight.
func (m *Manager) CDNUsage() cdn.Usage { return m.cdn.Usage() }

// RetryAfter is how long the origin of a failed task holds requests back
// (0: it does not).
func (m *Manager) RetryAfter(id taskid.ID) time.Duration { return m.cdn.RetryAfter(id) }

var _ upload.Tasks = (*Manager)(nil)

// Open returns the CDN's copy of the task for its upload server.
func (m *Manager) Open(ctx context.Context, id taskid.ID) (upload.Task, error) {
	return m.cdn.Open(ctx, id)
}

// TransferStarted is the CDN's upload server telling that it starts sending
// a piece to a peer (upload.WithTransferStart).
func (m *Manager) TransferStarted(ctx context.Context, id taskid.ID, peerID string, off, n int64) {
	_ = m.sched.TransferStarted(ctx, id, peerID, off, n)
}
