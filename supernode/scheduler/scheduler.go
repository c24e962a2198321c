// Package scheduler is the supernode's piece scheduler. It knows every task
// the CDN publishes (the digest of each published piece, the task's state), the
// peers in each task and the pieces each holds, and answers a peer's long
// poll with piece assignments: which piece to fetch next and from whom.
//
// One goroutine, Run, owns all of that state. Every exported method sends an
// event to it and waits for the answer, so the methods are safe for
// concurrent use and never see half-applied changes. Which pieces to hand out
// is decided by a pure selection policy (rarest first), picked by
// Config.Policy.
//
// An assignment holds one upload slot of its source (PeerUploadSlots per
// peer, CDNUploadSlots for the supernode) until the requester reports it,
// it times out (the piece's transfer time at MinPieceRate plus
// AssignmentGrace, at most AssignmentTimeout), a CDN assignment is not
// started within CDNStartGrace (WithStartReports), or the requester or
// source leaves or expires (PeerTTL). A requester has at most MaxOutstanding
// assignments in flight in a task.
//
// A source that fails StrikeLimit times in a task is struck out of it;
// struck-out peers may still download, but are no longer sources. A corrupt
// report is evidence, not a verdict: the reporter is no longer sent to that
// source, and the source is struck out when a second requester reports it
// corrupt. A requester is barred from a task (no more assignments, its
// reports ignored, no longer a source) when its assignments keep going
// unused (StrikeLimit of them expired or revoked, more than it reported) or
// its corrupt reports keep being contradicted (StrikeLimit times another
// requester verified the piece it reported from the same source).
//
// The scheduler knows at most MaxTasks tasks, and a peer is a member of at
// most MaxTasksPerPeer; beyond, AddTask and Join fail with ErrLimit. A
// succeeded task without members for IdleTaskTTL is forgotten
// (WithTaskForgotten), as is a failed one after FailedTaskTTL.
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

var (
	// ErrTaskNotFound: no task has the ID.
	ErrTaskNotFound = errors.New("task not found")
	// ErrPeerNotFound: the peer is not in the task (it never joined, left,
	// expired, or the task was replaced); it must register again.
	ErrPeerNotFound = errors.New("peer not found")
	// ErrTaskExists: AddTask for a task that is running or succeeded.
	ErrTaskExists = errors.New("task already exists")
	// ErrInvalid: an argument or configuration value is not acceptable.
	ErrInvalid = errors.New("invalid argument")
	// ErrClosed: Run has returned; the scheduler answers no more calls.
	ErrClosed = errors.New("scheduler stopped")
	// ErrLimit: a bound is reached (MaxTasks, MaxTasksPerPeer); the call
	// may succeed later. The peer API answers it 503 UNAVAILABLE.
	ErrLimit = errors.New("scheduler limit reached")
)

// Option configures a Scheduler.
type Option func(*Scheduler)

// WithLogger sets the logger; the default discards everything.
func WithLogger(l *zap.Logger) Option {
	return func(s *Scheduler) {
		if l != nil {
			s.logger = l
		}
	}
}

// WithClock sets the source of the current time, for tests. Expiry and
// timeouts are still checked on Run's ticker.
func WithClock(now func() time.Time) Option {
	return func(s *Scheduler) {
		if now != nil {
			s.now = now
		}
	}
}

// WithMetrics registers the scheduler's metrics with reg: the tasks by state,
// the peers, the assignments in flight and handed out, piece results, strikes
// and peers struck out.
func WithMetrics(reg prometheus.Registerer) Option {
	return func(s *Scheduler) { s.reg = reg }
}

// WithStartReports tells the scheduler that the CDN's upload server calls
// TransferStarted when it starts sending a piece (upload.WithTransferStart).
// CDN assignments whose transfer has not started within CDNStartGrace are
// then revoked and count as unused against their requester. Without it, the
// scheduler cannot tell a CDN assignment not yet started from one under way.
func WithStartReports() Option {
	return func(s *Scheduler) { s.startReports = true }
}

// WithTaskForgotten sets fn, called with the ID of each idle task the
// scheduler forgets: a succeeded task without members for IdleTaskTTL (not a
// failed one past FailedTaskTTL, nor one removed by RemoveTask). The caller
// may then drop what it keeps for the task; a registration may re-create
// the task meanwhile, which fn must not undo. fn runs on its own goroutine,
// may call the Scheduler, and Run waits for it before returning.
func WithTaskForgotten(fn func(taskID taskid.ID)) Option {
	return func(s *Scheduler) { s.forgotten = fn }
}

// WithDemand sets the function the scheduler hands the wanted pieces that a
// task does not have yet (see PollWant): the CDN's Demand. It is called on
// the event loop and must return at once.
func WithDemand(fn func(taskID taskid.ID, pieces []int)) Option {
	return func(s *Scheduler) { s.demand = fn }
}

// WithCDNCorruptReport sets fn, called with the task and piece of each
// corrupt report (schedapi.ReasonCorrupt) a requester makes against a piece
// the CDN was assigned to send it. Such a report never strikes the CDN; fn
// lets the CDN check its copy instead. fn runs on its own goroutine, and Run
// waits for it before returning.
func WithCDNCorruptReport(fn func(taskID taskid.ID, piece int)) Option {
	return func(s *Scheduler) { s.cdnCorrupt = fn }
}

// Scheduler assigns pieces of tasks to peers. Build it with New and start it
// with Run.
type Scheduler struct {
	logger *zap.Logger
	now    func() time.Time
	reg    prometheus.Registerer

	startReports bool
	forgotten    func(taskID taskid.ID)
	cdnCorrupt   func(taskID taskid.ID, piece int)
	demand       func(taskID taskid.ID, pieces []int)
	callbacks    sync.WaitGroup

	st      *state // owned by Run's goroutine
	sweep   time.Duration
	events  chan func()
	started atomic.Bool
	stopped chan struct{}
}

// New returns a scheduler for cfg (defaults applied, then validated). cdn is
// the supernode's own upload listener: the source of every published piece
// that no peer can serve.
func New(cfg Config, cdn schedapi.Peer, opts ...Option) (*Scheduler, error) {
	cfg = cfg.ApplyDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("new scheduler: %w", err)
	}
	if !validPeerID(cdn.ID) || !validAddr(cdn.Addr) {
		return nil, fmt.Errorf("new scheduler: cdn peer %q at %q: %w", cdn.ID, cdn.Addr, ErrInvalid)
	}
	pol, err := newPolicy(cfg.Policy)
	if err != nil {
		return nil, fmt.Errorf("new scheduler: %w", err)
	}
	s := &Scheduler{
		logger:  zap.NewNop(),
		now:     time.Now,
		sweep:   cfg.sweepInterval(),
		events:  make(chan func()),
		stopped: make(chan struct{}),
	}
	for _, o := range opts {
		o(s)
	}
	m, err := newMetrics(s.reg)
	if err != nil {
		return nil, fmt.Errorf("new scheduler: %w", err)
	}
	s.logger = s.logger.Named("scheduler")
	s.st = newState(cfg, cdn, pol, s.now, s.logger, m)
	s.st.startReports = s.startReports
	s.st.demand = s.demand
	if fn := s.forgotten; fn != nil {
		s.st.forgotten = func(id taskid.ID) { s.callbacks.Go(func() { fn(id) }) }
	}
	if fn := s.cdnCorrupt; fn != nil {
		s.st.cdnCorrupt = func(id taskid.ID, i int) { s.callbacks.Go(func() { fn(id, i) }) }
	}
	return s, nil
}

// Run owns the scheduler's state until ctx is done, then returns nil. Calls
// made after Run returns fail with ErrClosed. Run may be called once.
func (s *Scheduler) Run(ctx context.Context) error {
	if !s.started.CompareAndSwap(false, true) {
		return fmt.Errorf("run scheduler: already run: %w", ErrClosed)
	}
	// Callbacks may call the scheduler: they see ErrClosed once stopped is
	// closed, which happens before they are waited for.
	defer s.callbacks.Wait()
	defer close(s.stopped)
	tick := time.NewTicker(s.sweep)
	defer tick.Stop()
	// With start reports, CDN assignments not started in time lapse
	// between sweeps.
	var lapse <-chan time.Time
	if s.startReports {
		lt := time.NewTicker(max(s.st.cfg.cdnLapse()/2, time.Millisecond))
		defer lt.Stop()
		lapse = lt.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-s.events:
			ev()
		case <-tick.C:
			s.st.sweep()
		case <-lapse:
			s.st.lapseDue()
		}
		s.st.flush()
		s.st.m.observe(s.st)
	}
}

// call runs fn on the event loop and waits for it. It gives up with
// ctx.Err() if ctx ends before the loop takes fn, or ErrClosed if the loop
// has ended. Once taken, fn runs at once and to the end. An idle loop takes
// fn even if ctx is already done, so that a poll with no time to wait still
// gets an answer.
func (s *Scheduler) call(ctx context.Context, fn func()) error {
	done := make(chan struct{})
	ev := func() {
		defer close(done)
		fn()
	}
	select {
	case s.events <- ev:
	default:
		select {
		case s.events <- ev:
		case <-ctx.Done():
			return ctx.Err()
		case <-s.stopped:
			return ErrClosed
		}
	}
	<-done
	return nil
}

// do runs fn on the event loop and returns its results.
func do[T any](ctx context.Context, s *Scheduler, fn func() (T, error)) (T, error) {
	var v T
	var err error
	if cerr := s.call(ctx, func() { v, err = fn() }); cerr != nil {
		var zero T
		return zero, cerr
	}
	return v, err
}

func do0(ctx context.Context, s *Scheduler, fn func() error) error {
	var err error
	if cerr := s.call(ctx, func() { err = fn() }); cerr != nil {
		return cerr
	}
	return err
}

// TaskSpec describes a task the CDN starts fetching.
type TaskSpec struct {
	// ID is the task ID.
	ID taskid.ID
	// URL is the source. Credentials in it are not kept.
	URL string
	// PieceSize is the size of every piece but the last; 0 picks
	// piece.SizeFor(Size).
	PieceSize int64
	// Size is the content length, or -1 when unknown.
	Size int64
	// ContentDigest is the digest of the whole content, when known.
	ContentDigest digest.Digest
}

// AddTask starts scheduling a task the CDN has begun to fetch. A task with
// the same ID that failed is replaced (its peers must register again);
// any other gives ErrTaskExists.
func (s *Scheduler) AddTask(ctx context.Context, spec TaskSpec) error {
	return do0(ctx, s, func() error { return s.st.addTask(spec) })
}

// SetSize records the content size of a task created with an unknown size,
// which fixes its piece count.
func (s *Scheduler) SetSize(ctx context.Context, taskID taskid.ID, size int64) error {
	return do0(ctx, s, func() error { return s.st.setSize(taskID, size) })
}

// PublishPiece records the sha256 digest of piece n, which the CDN has
// stored and can now serve. Publishing a piece again with the same digest
// does nothing; with another digest it is ErrInvalid.
func (s *Scheduler) PublishPiece(ctx context.Context, taskID taskid.ID, n int, d digest.Digest) error {
	return do0(ctx, s, func() error { return s.st.publish(taskID, n, d) })
}

// PieceArriving tells the scheduler that the CDN has started reading piece
// n of a task of known size from its source, and can serve it as it
// arrives (n < 0: no piece is arriving any more, its read failed). At most
// one piece of a task arrives at a time; publishing it ends its arrival.
// With CutThrough off it is ignored.
func (s *Scheduler) PieceArriving(ctx context.Context, taskID taskid.ID, n int) error {
	return do0(ctx, s, func() error { return s.st.arrive(taskID, n) })
}

// Succeed marks a task's content complete and verified: size bytes, every
// piece published, whole-content digest content (may be empty if the task
// was created with one). Parked polls of the task are answered.
func (s *Scheduler) Succeed(ctx context.Context, taskID taskid.ID, size int64, content digest.Digest) error {
	return do0(ctx, s, func() error { return s.st.succeed(taskID, size, content) })
}

// Fail marks a task failed because of cause. Its assignments are cancelled,
// parked polls are answered, and it is forgotten after FailedTaskTTL. A
// succeeded task cannot fail (ErrInvalid): remove it instead.
func (s *Scheduler) Fail(ctx context.Context, taskID taskid.ID, cause error) error {
	return do0(ctx, s, func() error { return s.st.fail(taskID, cause) })
}

// RemoveTask forgets a task and its members; their parked polls get
// ErrTaskNotFound.
func (s *Scheduler) RemoveTask(ctx context.Context, taskID taskid.ID) error {
	return do0(ctx, s, func() error { return s.st.removeTask(taskID) })
}

// TaskInfo returns what a peer is told about a task.
func (s *Scheduler) TaskInfo(ctx context.Context, taskID taskid.ID) (schedapi.TaskInfo, error) {
	return do(ctx, s, func() (schedapi.TaskInfo, error) { return s.st.taskInfo(taskID) })
}

// Admit reports, with ErrLimit, whether Join of peerID to a task, creating
// the task first if it is unknown, would be refused for a bound
// (MaxTasksPerPeer, MaxTasks), so that a registration can be refused before
// the CDN starts anything for it. Nothing is reserved: AddTask and Join
// check again.
func (s *Scheduler) Admit(ctx context.Context, taskID taskid.ID, peerID string) error {
	return do0(ctx, s, func() error { return s.st.admit(taskID, peerID) })
}

// Join adds peer p to a task (ErrTaskNotFound if there is none), or
// refreshes its address if it is already in. have, which may be nil, lists
// pieces p already holds; pieces past the piece count (or, while the count
// is unknown, not yet published) are ignored.
func (s *Scheduler) Join(ctx context.Context, taskID taskid.ID, p schedapi.Peer, have *piece.Set) (schedapi.TaskInfo, error) {
	have = have.Clone() // the caller keeps its set
	return do(ctx, s, func() (schedapi.TaskInfo, error) { return s.st.join(taskID, p, have) })
}

// Poll hands peerID up to max assignments in a task (max <= 0 or above
// schedapi.MaxAssignments means schedapi.MaxAssignments). It is a long poll:
// with nothing to assign while the task runs, it waits until there is, until
// the task succeeds or fails, or until ctx is done, which gives the task's
// info and no assignments, not an error. A failed task, or a succeeded one
// the peer holds entirely, is answered at once. If ctx is cancelled (the
// caller hung up) just as assignments come, they are given back. It fails
// with ErrTaskNotFound, ErrPeerNotFound (the peer must register again), or
// ctx.Err() if ctx ends before the scheduler saw the poll.
func (s *Scheduler) Poll(ctx context.Context, taskID taskid.ID, peerID string, max int) (schedapi.PiecesResponse, error) {
	return s.PollWant(ctx, taskID, peerID, max, schedapi.NoWant)
}

// PollWant is Poll with what the poll asks for first: the pieces of
// want.Pieces come before any other, and of the others it gets at most
// want.Background (< 0: no cap; 0: wanted pieces only). A poll with wants
// is also retried before the parked polls without, and the wanted pieces
// the task does not have yet are handed to the demand hook (WithDemand),
// so that the CDN fetches them from the source first. An invalid want is
// ErrInvalid.
func (s *Scheduler) PollWant(ctx context.Context, taskID taskid.ID, peerID string, max int, want schedapi.Want) (schedapi.PiecesResponse, error) {
	if max <= 0 || max > schedapi.MaxAssignments {
		max = schedapi.MaxAssignments
	}
	if !want.Valid() {
		return schedapi.PiecesResponse{}, fmt.Errorf("poll: want %v: %w", want.Pieces, ErrInvalid)
	}
	w := newWaiter(taskID, peerID, max)
	w.setWant(want)
	if err := s.call(ctx, func() { s.st.poll(w) }); err != nil {
		return schedapi.PiecesResponse{}, err
	}
	select {
	case r := <-w.reply:
		return s.deliver(ctx, w, r)
	case <-ctx.Done():
	case <-s.stopped:
		return s.lastReply(w, ErrClosed)
	}
	// The caller stopped waiting: take the poll back. The loop answers it
	// now with the task's info, unless it already answered.
	select {
	case s.events <- func() { s.st.unpark(w) }:
	case <-s.stopped:
		return s.lastReply(w, ctx.Err())
	}
	return s.deliver(ctx, w, <-w.reply) // unpark has run: w is answered
}

// SetWant changes what peerID's parked polls of a task ask for: at most max
// assignments (<= 0: unchanged), want's pieces first, as PollWant's. They
// are retried at once, and the wanted pieces the task lacks go to the
// demand hook. A peer updates its parked poll this way rather than
// cancelling it: an answer cancelled on its way back would be lost, its
// assignments counted unused. With no parked poll nothing changes. Errors
// are ErrTaskNotFound, ErrPeerNotFound and ErrInvalid.
func (s *Scheduler) SetWant(ctx context.Context, taskID taskid.ID, peerID string, max int, want schedapi.Want) error {
	if max > schedapi.MaxAssignments {
		max = schedapi.MaxAssignments
	}
	if !want.Valid() {
		return fmt.Errorf("want: %v: %w", want.Pieces, ErrInvalid)
	}
	return do0(ctx, s, func() error { return s.st.setWant(taskID, peerID, max, want) })
}

// deliver returns a poll's answer. If the caller was cancelled (it hung up,
// as opposed to its wait running out), nobody will fetch the assignments:
// they are given back at once rather than holding slots until they time out.
func (s *Scheduler) deliver(ctx context.Context, w *waiter, r pollReply) (schedapi.PiecesResponse, error) {
	if r.err == nil && len(r.resp.Assignments) > 0 && errors.Is(ctx.Err(), context.Canceled) {
		if err := s.call(context.WithoutCancel(ctx), func() { s.st.release(w) }); err == nil {
			r.resp.Assignments = nil
		}
	}
	return r.resp, r.err
}

// lastReply returns w's answer if the loop gave one before it stopped.
func (s *Scheduler) lastReply(w *waiter, err error) (schedapi.PiecesResponse, error) {
	select {
	case r := <-w.reply:
		return r.resp, r.err
	default:
		return schedapi.PiecesResponse{}, err
	}
}

// Report records piece results of peerID in a task. An OK result makes the
// peer a holder of the piece; any result ends the assignment of the piece
// and frees its source's slot. A failure naming the assigned source counts
// against it (see Config.StrikeLimit); a "range not available" failure also
// stops counting the source as a holder of the piece. Results with a piece
// out of range or no source make the whole report ErrInvalid.
func (s *Scheduler) Report(ctx context.Context, taskID taskid.ID, peerID string, results []schedapi.PieceResult) error {
	return do0(ctx, s, func() error { return s.st.report(taskID, peerID, results) })
}

// TransferStarted tells the scheduler that the CDN began sending bytes
// [off, off+n) of a task to peerID (the requester named by the
// schedapi.HeaderPeer request header). The CDN assignments of the pieces in
// the range are then started: they are no longer revoked for not starting,
// and their deadline counts from now. Anything it does not match is
// ignored.
func (s *Scheduler) TransferStarted(ctx context.Context, taskID taskid.ID, peerID string, off, n int64) error {
	return s.call(ctx, func() { s.st.started(taskID, peerID, off, n) })
}

// Leave takes peerID out of a task: it no longer serves or fetches it, and
// the slots its assignments held are freed.
func (s *Scheduler) Leave(ctx context.Context, taskID taskid.ID, peerID string) error {
	return do0(ctx, s, func() error { return s.st.leave(taskID, peerID) })
}

// Heartbeat keeps peerID alive and updates its address (when addr is not
// empty). It returns the tasks of tasks that the peer is not in (it expired,
// or the supernode restarted): the peer registers for them again.
func (s *Scheduler) Heartbeat(ctx context.Context, peerID, addr string, tasks []taskid.ID) ([]taskid.ID, error) {
	return do(ctx, s, func() ([]taskid.ID, error) { return s.st.heartbeat(peerID, addr, tasks) })
}

// sweepNow runs one expiry sweep on the loop, as Run's ticker does.
func (s *Scheduler) sweepNow(ctx context.Context) error {
	return s.call(ctx, s.st.sweep)
}
