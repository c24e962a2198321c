package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/schedclient"
	"github.com/damselfly/damselfly/pkg/taskid"
)

type mode int

const (
	modeP2P    mode = iota // pieces from peers; verified holds what is readable
	modeSource             // bytes from the source, in order; srcOff is readable
	modeDone               // committed; blob is readable
)

// leaveTimeout bounds the goodbye to the supernode when a task ends.
const leaveTimeout = 5 * time.Second

// task is one download shared by every Download handle of its ID.
//
// Lock order: ioMu before mu. ioMu guards the lifetime of w and blob: reads
// and writes of bytes hold it shared, swapping or closing them holds it
// exclusively. mu guards the rest.
type task struct {
	e   *Engine
	id  taskid.ID
	ref string
	req Request // of the Download that created it
	log *zap.Logger

	// refs and closing are guarded by e.mu.
	refs    int
	closing bool
	closed  chan struct{} // teardown finished

	ioMu sync.RWMutex
	w    content.Writer
	blob content.ReaderAt
	gen  int // bumped (under ioMu and mu) whenever w is replaced

	mu       sync.Mutex
	mode     mode
	info     schedapi.TaskInfo
	verified *piece.Set
	// pieceDigests holds, by piece, the digest each verified piece was
	// checked against (for the supernode's vouch, see commit).
	pieceDigests []digest.Digest
	srcOff       int64
	changed      chan struct{} // closed and replaced on every change
	handles      map[*Download]struct{}
	registered   bool // the supernode knows this peer in the task
	progress     Progress
	done         chan struct{}
	result       Result
	err          error

	// wants are the byte ranges open range readers need now (want.go);
	// wantCh is signalled when one is added.
	wants   map[*wantRange]struct{}
	wantSeq uint64
	wantCh  chan struct{}
	// streams are the open readers of the whole content (pace.go); paced
	// says the background fill waits for the slowest of them.
	streams map[*reader]struct{}
	paced   atomic.Bool

	cancel  context.CancelFunc
	runDone chan struct{} // nil when nothing runs
}

func newTask(e *Engine, id taskid.ID, req Request) *task {
	return &task{
		e:        e,
		id:       id,
		ref:      id.FileName(),
		req:      req,
		log:      e.logger.With(zap.Stringer("task", id)),
		closed:   make(chan struct{}),
		verified: &piece.Set{},
		changed:  make(chan struct{}),
		handles:  make(map[*Download]struct{}),
		wants:    make(map[*wantRange]struct{}),
		streams:  make(map[*reader]struct{}),
		wantCh:   make(chan struct{}, 1),
		done:     make(chan struct{}),
		info:     schedapi.TaskInfo{TaskID: id.String(), Size: -1, PieceCount: -1},
		progress: Progress{Size: -1},
	}
}

// notifyLocked wakes everyone waiting for a change. t.mu must be held.
func (t *task) notifyLocked() {
	close(t.changed)
	t.changed = make(chan struct{})
}

// start begins the task after its first registration: it completes at once
// when the content is already committed, and otherwise runs the download.
func (t *task) start(ctx context.Context, resp schedapi.RegisterResponse, regErr error, have *content.Info) {
	t.mu.Lock()
	t.registered = regErr == nil
	if regErr == nil {
		t.info = resp.TaskInfo
		t.progress.Size = resp.Size
	}
	t.mu.Unlock()

	if have == nil && regErr == nil && resp.ContentDigest != "" {
		d := digest.Digest(resp.ContentDigest)
		if info, err := t.e.store.Info(ctx, d); err == nil && d.Validate() == nil {
			have = &info
			// Tell the supernode this peer holds everything.
			set, ps := allPieces(info.Size)
			if ps == resp.PieceSize {
				if _, err := t.e.sched.Register(ctx, t.registerRequest(set, ps)); err != nil {
					t.log.Debug("register as seed", zap.Error(err))
				}
			}
		}
	}
	if have != nil {
		blob, err := t.e.store.ReaderAt(ctx, have.Digest)
		if err == nil {
			t.ioMu.Lock()
			t.blob = blob
			t.ioMu.Unlock()
			t.mu.Lock()
			t.info.Size = have.Size
			t.progress.Size, t.progress.Completed = have.Size, have.Size
			t.mu.Unlock()
			t.e.metrics.downloads.WithLabelValues("ok", "cached").Inc()
			t.finish(Result{Digest: have.Digest, Size: have.Size}, nil)
			return
		}
		t.log.Warn("open committed content", zap.Error(err))
	}

	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	t.cancel = cancel
	t.runDone = make(chan struct{})
	go t.run(runCtx, resp, regErr)
}

func (t *task) registerRequest(have *piece.Set, pieceSize int64) schedapi.RegisterRequest {
	return schedapi.RegisterRequest{
		Peer:       t.e.self,
		URL:        t.req.URL,
		File:       t.req.File,
		Header:     t.req.Header,
		Digest:     t.req.Digest.String(),
		Filter:     t.req.Filter,
		Identifier: t.req.Identifier,
		Size:       max(t.req.Size, 0),
		Have:       have,
		PieceSize:  pieceSize,
	}
}

func (t *task) run(ctx context.Context, resp schedapi.RegisterResponse, regErr error) {
	defer close(t.runDone)
	var err error
	switch {
	case regErr != nil:
		err = fmt.Errorf("%w: %w", ErrP2PFailed, regErr)
	case resp.State == schedapi.TaskFailed && resp.RetryAfter > 0:
		// The origin is rate-limiting: wait for the CDN's next attempt
		// rather than adding to the origin's load.
		if err = t.awaitOrigin(ctx, resp.TaskInfo, time.Now().Add(t.e.cfg.StallTimeout)); err == nil {
			err = t.p2p(ctx)
		}
	case resp.State == schedapi.TaskFailed:
		err = fmt.Errorf("%w: task failed on the supernode: %s", ErrP2PFailed, resp.Error)
	default:
		err = t.p2p(ctx)
	}
	mode := "p2p"
	if err != nil && errors.Is(err, ErrP2PFailed) && ctx.Err() == nil && t.req.BackToSource {
		reason := p2pReason(err)
		t.log.Warn("falling back to source", zap.String("reason", reason))
		t.e.metrics.fallbacks.Inc()
		t.emit(Event{Kind: EventFallback, Reason: reason, Err: err})
		mode = "source"
		err = t.fromSource(ctx)
	}
	if ctx.Err() != nil && err != nil {
		err = fmt.Errorf("%w: %w", ErrClosed, err)
	}
	result := "ok"
	if err != nil {
		result = "failed"
	}
	t.e.metrics.downloads.WithLabelValues(result, mode).Inc()
	t.mu.Lock()
	res := t.result
	t.mu.Unlock()
	t.finish(res, err)
}

// p2pReason is the cause of a P2P failure, without the ErrP2PFailed prefix.
func p2pReason(err error) string {
	s := err.Error()
	prefix := ErrP2PFailed.Error() + ": "
	if len(s) > len(prefix) && s[:len(prefix)] == prefix {
		return s[len(prefix):]
	}
	return s
}

// finish records the outcome once and wakes every waiter.
func (t *task) finish(res Result, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	select {
	case <-t.done:
		return
	default:
	}
	t.result, t.err = res, err
	if err == nil {
		t.mode = modeDone
	}
	close(t.done)
	for d := range t.handles {
		d.closeEventsLocked()
	}
	t.notifyLocked()
}

// seeding reports whether the task is committed and known to the supernode.
func (t *task) seeding() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.mode == modeDone && t.registered
}

// reregisterSeed registers again with every piece, after the supernode
// forgot this peer.
func (t *task) reregisterSeed(ctx context.Context) error {
	t.mu.Lock()
	size, ps := t.result.Size, t.info.PieceSize
	t.mu.Unlock()
	set, defPS := allPieces(size)
	if ps > 0 && ps != defPS {
		// The supernode cut this task differently: say so in its terms.
		n := piece.Count(size, ps)
		set = piece.NewSet(n)
		for i := range n {
			set.Add(i)
		}
	} else {
		ps = defPS
	}
	_, err := t.e.sched.Register(ctx, t.registerRequest(set, ps))
	return err
}

// teardown stops the task after its last handle is gone: the download is
// cancelled, the supernode told, the ingest (if uncommitted) dropped.
func (t *task) teardown() {
	if t.cancel != nil {
		t.cancel()
		<-t.runDone
	}
	t.finish(Result{}, ErrClosed)
	t.mu.Lock()
	registered := t.registered
	t.registered = false
	t.mu.Unlock()
	if registered {
		ctx, cancel := context.WithTimeout(context.Background(), leaveTimeout)
		if err := t.e.sched.Leave(ctx, t.id, t.e.self.ID); err != nil &&
			!errors.Is(err, schedclient.ErrTaskNotFound) && !errors.Is(err, schedclient.ErrPeerNotFound) {
			t.log.Debug("leave", zap.Error(err))
		}
		cancel()
	}
	t.ioMu.Lock()
	if t.w != nil {
		_ = t.w.Close()
		t.w = nil
	}
	if t.blob != nil {
		_ = t.blob.Close()
		t.blob = nil
	}
	t.ioMu.Unlock()
	t.e.pcache.drop(t)
}

// emit sends ev to every handle, dropping it for handles that do not keep
// up.
func (t *task) emit(ev Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for d := range t.handles {
		d.sendLocked(ev)
	}
}

// readable returns how many bytes from off can be read now, before commit.
// t.mu must be held.
func (t *task) readableLocked(off int64) int64 {
	switch t.mode {
	case modeSource:
		return max(t.srcOff-off, 0)
	case modeP2P:
		ps := t.info.PieceSize
		if ps <= 0 || off < 0 {
			return 0
		}
		size := t.info.Size
		if size >= 0 && off >= size {
			return 0
		}
		i := piece.Index(off, ps)
		if !t.verified.Has(i) {
			return 0
		}
		j := i
		for t.verified.Has(j + 1) {
			j++
		}
		end := int64(j+1) * ps
		if size >= 0 {
			end = min(end, size)
		}
		return max(end-off, 0)
	}
	return 0
}

// readIngest reads bytes of the ingest of generation gen, which the caller
// found readable. It returns errSwapped when that ingest is gone (committed,
// or replaced by a source fetch): the caller looks at the task state again.
func (t *task) readIngest(p []byte, off int64, gen int, ps int64) (int, error) {
	t.ioMu.RLock()
	defer t.ioMu.RUnlock()
	if t.w == nil || t.gen != gen {
		return 0, errSwapped
	}
	n, err := t.e.pcache.readThrough(t, ps, t.w, p, off)
	if errors.Is(err, io.EOF) && n == len(p) {
		err = nil
	}
	return n, err
}

var errSwapped = errors.New("ingest swapped")

// dropIngestLocked closes the ingest and makes nothing of it readable: after
// a failed commit (which removed it), or before starting afresh. The caller
// holds ioMu.
func (t *task) dropIngestLocked() {
	if t.w != nil {
		_ = t.w.Close()
	}
	t.e.pcache.drop(t)
	t.mu.Lock()
	t.w = nil
	t.gen++
	t.verified = &piece.Set{}
	t.pieceDigests = nil
	t.srcOff = 0
	t.notifyLocked()
	t.mu.Unlock()
}

// publishLocked switches reads from the committed ingest to its blob. The
// caller holds ioMu.
func (t *task) publishLocked(ctx context.Context, res Result) error {
	blob, err := t.e.store.ReaderAt(ctx, res.Digest)
	if err != nil {
		return fmt.Errorf("open committed content: %w", err)
	}
	if t.w != nil {
		_ = t.w.Close()
	}
	t.mu.Lock()
	t.w = nil
	t.gen++
	t.blob = blob
	t.info.Size = res.Size
	t.progress.Size = res.Size
	t.result = res
	t.mu.Unlock()
	return nil
}
