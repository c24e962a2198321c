package peer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/backoff"
	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
)

// Every retry loop of a download backs off with jitter
// (backoff.Backoff), so that no loop spins and peers that failed
// together do not come back together; the stall timer bounds the whole.
const (
	// pollRetryMin and pollRetryMax bound the pause after a failed poll.
	pollRetryMin = 250 * time.Millisecond
	pollRetryMax = 2 * time.Second
	// emptyPollMin and emptyPollMax bound the pause after a poll answered
	// at once with nothing to fetch.
	emptyPollMin = 50 * time.Millisecond
	emptyPollMax = time.Second
	// failedPieceMin and failedPieceMax bound how long a failed piece
	// fetch waits to be reported, growing while failures follow failures:
	// a source that fails at once is not handed the piece back at once.
	failedPieceMin = 20 * time.Millisecond
	failedPieceMax = 2 * time.Second
	// reportRetryMin and reportRetryMax bound the pause after a failed
	// report; the results that come meanwhile go with the next one.
	reportRetryMin = 100 * time.Millisecond
	reportRetryMax = time.Second
	// wantUpdateTimeout bounds one update of a parked poll's wants.
	wantUpdateTimeout = 5 * time.Second
	// reportBatch bounds how many results one report carries.
	reportBatch = schedapi.MaxAssignments
)

type pollResult struct {
	resp schedapi.PiecesResponse
	err  error
	took time.Duration
}

type fetchResult struct {
	a   schedapi.Assignment
	res schedapi.PieceResult
	// fatal is a local failure (the store): it ends the download.
	fatal error
	// refused is set when this peer's own outbound policy refused the
	// source's address.
	refused error
}

// p2p downloads the task from peers. Errors that going to the source may
// cure wrap ErrP2PFailed.
func (t *task) p2p(ctx context.Context) error {
	cfg := t.e.cfg
	t.mu.Lock()
	info := t.info
	t.mu.Unlock()
	if info.PieceSize <= 0 {
		return fmt.Errorf("%w: supernode gave piece size %d", ErrP2PFailed, info.PieceSize)
	}

	w, err := t.e.store.Writer(ctx, t.ref)
	if err != nil {
		return fmt.Errorf("open ingest: %w", err)
	}
	if vw, ok := w.(content.VouchedWriter); ok {
		// Every piece is verified against the supernode's digest as it
		// arrives; the content is hashed again only if the supernode does
		// not vouch for it (commit).
		vw.SkipHash()
	}
	t.ioMu.Lock()
	t.mu.Lock()
	t.w = w
	t.gen++
	t.mode = modeP2P
	t.progress.Size = info.Size
	t.notifyLocked()
	t.mu.Unlock()
	t.ioMu.Unlock()

	fetchCtx, cancelFetches := context.WithCancel(ctx)
	var fetchers sync.WaitGroup
	results := make(chan fetchResult, cfg.Concurrency)
	inflight := map[int]bool{}

	polls := make(chan pollResult, 1)
	polling := false
	cancelPoll := func() {}

	rep := newReporter(t)
	go rep.run(ctx)

	var delayed []schedapi.PieceResult // failures waiting for flush
	var flush <-chan time.Time
	flushDelayed := func() {
		for _, r := range delayed {
			rep.add(ctx, r)
		}
		delayed = nil
	}

	defer func() {
		cancelPoll()
		if polling {
			<-polls
		}
		cancelFetches()
		fetchers.Wait()
		flushDelayed()
		rep.close()
	}()

	stall := time.NewTimer(cfg.StallTimeout)
	defer stall.Stop()
	stallAt := time.Now().Add(cfg.StallTimeout)
	// stallStopped: the loop is idle by choice (nothing wanted, the
	// background fill off or paced), which is no stall.
	stallStopped := false
	var bk *bucket // paces the background fill (Config.Prefetch.Rate)
	if cfg.Prefetch.Rate > 0 && !cfg.Prefetch.Off {
		bk = newBucket(int64(cfg.Prefetch.Rate), time.Now())
	}
	// asked holds the wanted pieces of the poll in flight. When a reader
	// wants others, the parked poll is updated (schedclient.Want), never
	// cancelled: an answer cancelled on its way would be lost, and its
	// assignments counted against this peer. One update at a time; the
	// latest plan goes next.
	var asked map[int]bool
	updated := make(chan struct{}, 1)
	updating, updateAgain := false, false
	sendWant := func(plan pollPlan) {
		updating = true
		go func() {
			uctx, cancel := context.WithTimeout(ctx, wantUpdateTimeout)
			defer cancel()
			if err := t.e.sched.Want(uctx, t.id, t.e.self.ID, plan.limit, plan.want); err != nil {
				t.log.Debug("update the parked poll", zap.Error(err))
			}
			updated <- struct{}{}
		}()
	}
	defer func() {
		if updating {
			<-updated
		}
	}()
	var retry <-chan time.Time
	pollBackoff := backoff.Backoff{Min: pollRetryMin, Max: pollRetryMax}
	emptyBackoff := backoff.Backoff{Min: emptyPollMin, Max: emptyPollMax}
	failBackoff := backoff.Backoff{Min: failedPieceMin, Max: failedPieceMax}
	var lastPollErr error
	refusals := map[string]int{} // refused source address -> times, since the last verified piece

	for {
		if ok, err := t.complete(); err != nil {
			return err
		} else if ok {
			break
		}
		if !polling && retry == nil {
			plan := t.planPoll(inflight, bk, time.Now())
			switch {
			case plan.limit > 0:
				if stallStopped {
					stallStopped = false
					stall.Reset(cfg.StallTimeout)
					stallAt = time.Now().Add(cfg.StallTimeout)
				}
				pctx, cancel := context.WithCancel(ctx)
				cancelPoll = cancel
				polling = true
				asked = plan.wanted
				go func() {
					start := time.Now()
					resp, err := t.e.sched.Pieces(pctx, t.id, t.e.self.ID, plan.limit, cfg.PollWait, plan.want)
					took := time.Since(start)
					t.log.Debug("poll answered", zap.Int("limit", plan.limit), zap.Int("wanted", len(plan.want.Pieces)),
						zap.Int("assignments", len(resp.Assignments)), zap.Duration("took", took), zap.Error(err))
					polls <- pollResult{resp, err, took}
				}()
			case plan.idle:
				if !stallStopped {
					stallStopped = true
					stall.Stop()
				}
				if plan.after > 0 {
					retry = time.After(plan.after)
				}
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-stall.C:
			return t.stalled(lastPollErr)
		case <-retry:
			retry = nil
		case <-t.wantCh:
			// A reader wants something: ask for it now unless the poll in
			// flight already does (without a poll in flight, the next one
			// asks for it).
			retry = nil
			if !polling {
				continue
			}
			if plan := t.planPoll(inflight, bk, time.Now()); len(plan.want.Pieces) > 0 && !covers(asked, plan.want.Pieces) {
				asked = plan.wanted
				if updating {
					updateAgain = true
				} else {
					sendWant(plan)
				}
			}
		case <-updated:
			updating = false
			if updateAgain && polling {
				updateAgain = false
				if plan := t.planPoll(inflight, bk, time.Now()); len(plan.want.Pieces) > 0 {
					asked = plan.wanted
					sendWant(plan)
				}
			}
		case pr := <-polls:
			polling = false
			updateAgain = false
			cancelPoll()
			if pr.err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				lastPollErr = pr.err
				t.noteUnreachable(pr.err)
				if err := t.pollFailed(ctx, pr.err, stallAt); err != nil {
					return err
				}
				retry = time.After(pollBackoff.Next())
				continue
			}
			lastPollErr = nil
			pollBackoff.Reset()
			t.noteReachable()
			if pr.resp.State == schedapi.TaskFailed && pr.resp.RetryAfter > 0 {
				// The origin is rate-limiting: the CDN retries it.
				if err := t.awaitOrigin(ctx, pr.resp.TaskInfo, stallAt); err != nil {
					return err
				}
				continue
			}
			if err := t.updateInfo(pr.resp.TaskInfo); err != nil {
				return err
			}
			switch {
			case len(pr.resp.Assignments) > 0:
				emptyBackoff.Reset()
			case pr.took < cfg.PollWait/2:
				// Answered at once with nothing: do not ask again at once.
				retry = time.After(emptyBackoff.Next())
			}
			for _, a := range pr.resp.Assignments {
				if inflight[a.Piece] {
					continue
				}
				if err := t.checkAssignment(a); err != nil {
					t.log.Warn("bad assignment", zap.Int("piece", a.Piece), zap.Error(err))
					rep.add(ctx, schedapi.PieceResult{Piece: a.Piece, From: a.From.ID, Reason: schedapi.ReasonAborted, Error: "bad assignment: " + err.Error()})
					continue
				}
				if t.hasPiece(a.Piece) {
					rep.add(ctx, schedapi.PieceResult{Piece: a.Piece, From: a.From.ID, OK: true})
					continue
				}
				if len(inflight) >= 2*cfg.Concurrency {
					// More than asked for: the supernode takes it back
					// when the assignment times out.
					t.log.Debug("assignment over the limit", zap.Int("piece", a.Piece))
					continue
				}
				if bk != nil && !asked[a.Piece] {
					bk.take(time.Now(), a.Length, a.Length)
				}
				inflight[a.Piece] = true
				t.e.lastFetch.Store(time.Now().UnixNano())
				fetchers.Add(1)
				go func() {
					defer fetchers.Done()
					r := t.fetch(fetchCtx, a)
					select {
					case results <- r:
					case <-fetchCtx.Done():
					}
				}()
			}
		case fr := <-results:
			delete(inflight, fr.a.Piece)
			if fr.fatal != nil {
				return fr.fatal
			}
			switch {
			case fr.res.OK:
				rep.add(ctx, fr.res)
				t.markVerified(fr.a)
				stall.Reset(cfg.StallTimeout)
				stallAt = time.Now().Add(cfg.StallTimeout)
				failBackoff.Reset()
				clear(refusals)
			case fr.res.Reason == schedapi.ReasonAborted:
				rep.add(ctx, fr.res)
			default:
				if fr.refused != nil {
					refusals[fr.a.From.Addr]++
					if err := t.refused(fr, refusals[fr.a.From.Addr]); err != nil {
						rep.add(ctx, fr.res)
						return err
					}
				}
				// A failure is reported after a pause that grows while
				// failures follow failures: the report frees the piece, and
				// a source that fails at once would otherwise get it back
				// at once, again and again.
				delayed = append(delayed, fr.res)
				if flush == nil {
					flush = time.After(failBackoff.Next())
				}
			}
		case <-flush:
			flush = nil
			flushDelayed()
		}
	}

	// Every piece is verified: publish the content.
	cancelPoll()
	if polling {
		<-polls
		polling = false
	}
	cancelFetches()
	fetchers.Wait()
	flushDelayed()
	rep.close()
	return t.commit(ctx)
}

// updateInfo takes a new TaskInfo from the supernode.
func (t *task) updateInfo(info schedapi.TaskInfo) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	merged, err := mergeInfo(t.info, info)
	if err != nil {
		return err
	}
	changed := merged != t.info
	t.info = merged
	t.progress.Size = merged.Size
	if changed {
		t.notifyLocked()
	}
	return nil
}

// mergeInfo checks a TaskInfo from the supernode against what the task
// already knows and returns the new one. The piece size, a known size and a
// known content digest never change: pieces already verified were cut and
// will be committed by them. A supernode that took the task over (after a
// restart, or from a dead one) may not know the size or the content digest
// yet: what the task learnt stays.
func mergeInfo(old, info schedapi.TaskInfo) (schedapi.TaskInfo, error) {
	if info.State == schedapi.TaskFailed {
		return old, fmt.Errorf("%w: task failed on the supernode: %s", ErrP2PFailed, info.Error)
	}
	if info.PieceSize != old.PieceSize {
		return old, fmt.Errorf("%w: piece size changed from %d to %d", ErrP2PFailed, old.PieceSize, info.PieceSize)
	}
	if old.Size >= 0 {
		if info.Size >= 0 && info.Size != old.Size {
			return old, fmt.Errorf("%w: size changed from %d to %d", ErrP2PFailed, old.Size, info.Size)
		}
		info.Size, info.PieceCount = old.Size, old.PieceCount
	}
	if old.ContentDigest != "" {
		if info.ContentDigest != "" && info.ContentDigest != old.ContentDigest {
			return old, fmt.Errorf("%w: content digest changed from %s to %s", ErrP2PFailed, old.ContentDigest, info.ContentDigest)
		}
		info.ContentDigest = old.ContentDigest
	}
	info.TaskID = old.TaskID
	return info, nil
}

// checkAssignment rejects assignments that do not fit the task.
func (t *task) checkAssignment(a schedapi.Assignment) error {
	t.mu.Lock()
	size, ps := t.info.Size, t.info.PieceSize
	t.mu.Unlock()
	if err := validAssignmentDigest(a); err != nil {
		return err
	}
	if a.Piece < 0 {
		return fmt.Errorf("piece %d", a.Piece)
	}
	off, n := piece.Bounds(a.Piece, size, ps)
	if a.Offset != off || a.Length <= 0 || a.Length > ps || (size >= 0 && a.Length != n) {
		return fmt.Errorf("range %d+%d, want %d+%d", a.Offset, a.Length, off, n)
	}
	if a.From.ID == t.e.self.ID {
		return errors.New("assigned to fetch from itself")
	}
	if a.From.Addr == "" {
		return errors.New("no address to fetch from")
	}
	return nil
}

func (t *task) hasPiece(i int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.verified.Has(i)
}

func (t *task) markVerified(a schedapi.Assignment) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.verified.Has(a.Piece) {
		return
	}
	t.verified.Add(a.Piece)
	if a.Piece >= len(t.pieceDigests) {
		t.pieceDigests = append(t.pieceDigests, make([]digest.Digest, a.Piece+1-len(t.pieceDigests))...)
	}
	t.pieceDigests[a.Piece] = digest.Digest(a.Digest)
	t.progress.Completed += a.Length
	if a.FromCDN {
		t.progress.FromCDN += a.Length
	} else {
		t.progress.FromPeers += a.Length
	}
	t.notifyLocked()
}

// complete reports whether every piece is verified and the content
// digest to commit with is known. A disagreement between the requested and
// the supernode's digest is an error.
func (t *task) complete() (bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.req.Digest != "" && t.info.ContentDigest != "" && digest.Digest(t.info.ContentDigest) != t.req.Digest {
		return false, fmt.Errorf("%w: want %s, supernode has %s", ErrDigestMismatch, t.req.Digest, t.info.ContentDigest)
	}
	if t.req.Size > 0 && t.info.Size >= 0 && t.info.Size != t.req.Size {
		// A P2P failure too: the supernode's copy may be stale (a fetch of a
		// broken upstream still running), so the source gets a chance,
		// where the same check applies before any byte.
		return false, fmt.Errorf("%w: %w: want %d bytes, the supernode's source has %d", ErrP2PFailed, ErrSizeMismatch, t.req.Size, t.info.Size)
	}
	size, ps := t.info.Size, t.info.PieceSize
	if size < 0 || ps <= 0 {
		return false, nil
	}
	if t.req.Digest == "" && t.info.ContentDigest == "" {
		return false, nil
	}
	return t.verified.HasAll(piece.Count(size, ps)), nil
}

// commit publishes the verified ingest and switches reads to the blob.
func (t *task) commit(ctx context.Context) error {
	t.mu.Lock()
	size := t.info.Size
	expected := t.req.Digest
	if expected == "" {
		expected = digest.Digest(t.info.ContentDigest)
	}
	t.mu.Unlock()

	// Flush the ingest to disk while readers still read it: Commit's own
	// fsync, under the lock that holds them off, then has little to do.
	t.ioMu.RLock()
	if t.w != nil {
		if err := t.w.Sync(); err != nil {
			t.log.Debug("sync ingest", zap.Error(err))
		}
	}
	t.ioMu.RUnlock()

	vouched := t.awaitVouch(ctx)

	t.ioMu.Lock()
	defer t.ioMu.Unlock()
	w := t.w
	if w == nil {
		return fmt.Errorf("commit: %w", ErrClosed)
	}
	var err error
	if vw, ok := w.(content.VouchedWriter); ok && vouched && expected != "" {
		err = vw.CommitVouched(ctx, size, expected)
	} else {
		err = w.Commit(ctx, size, expected)
	}
	if err != nil && !errors.Is(err, content.ErrAlreadyExists) {
		// A failed commit removed the ingest: nothing in it may be read
		// any more. Readers wait for the download's final error.
		t.dropIngestLocked()
		if errors.Is(err, content.ErrDigestMismatch) {
			return fmt.Errorf("%w: want %s: %w", ErrDigestMismatch, expected, err)
		}
		return fmt.Errorf("commit: %w", err)
	}
	dgst := w.Digest()
	if dgst == "" {
		dgst = expected
	}
	if err := t.publishLocked(ctx, Result{Digest: dgst, Size: size}); err != nil {
		return err
	}
	t.log.Info("download complete", zap.Stringer("digest", dgst), zap.Int64("size", size))
	return nil
}
