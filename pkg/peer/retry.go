package peer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/backoff"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/schedclient"
)

// This file holds how a download says why it is not progressing and waits
// without spinning: a supernode that cannot be reached, piece sources this
// peer's own outbound policy refuses, an origin that rate-limits.

// ErrRefused: a piece source is refused by this peer's own outbound policy.
// When the CDN is, or one peer again and again with nothing verified in
// between, P2P cannot progress: the download ends P2P at once (an
// ErrP2PFailed) with one line naming the address and the setting that
// allows it.
var ErrRefused = errors.New("is refused by this node's outbound policy")

// refusedRepeat is how many times one peer's address may be refused, with
// no piece verified in between, before P2P is given up: the supernode keeps
// assigning it, so nothing else holds the pieces.
const refusedRepeat = 3

// refused decides whether a piece fetch the outbound policy refused ends
// P2P: always for the CDN (the last resort of every piece), for a peer once
// it was refused n = refusedRepeat times.
func (t *task) refused(fr fetchResult, n int) error {
	if !fr.a.FromCDN && n < refusedRepeat {
		return nil
	}
	addr := fr.a.From.Addr
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	who := "peer " + addr
	if fr.a.FromCDN {
		who = "the supernode's CDN at " + addr
	}
	hint := t.e.policyHint
	if hint == "" {
		hint = "the peer policy's allow list:"
	}
	t.log.Warn("piece source refused by the outbound policy", zap.String("addr", addr),
		zap.Bool("cdn", fr.a.FromCDN), zap.String("allow", hint+" "+host), zap.Error(fr.refused))
	return fmt.Errorf("%w: %s %w (allow it with %s %s)", ErrP2PFailed, who, ErrRefused, hint, host)
}

// noteUnreachable records that a call to the supernode failed because it
// cannot be reached: Progress says so and the handles get EventUnreachable,
// once per outage. Other errors are ignored.
func (t *task) noteUnreachable(err error) {
	var ue *schedclient.UnreachableError
	if !errors.As(err, &ue) {
		return
	}
	t.mu.Lock()
	first := t.progress.Unreachable == ""
	if first {
		t.progress.Unreachable = ue.Node
		t.progress.UnreachableSince = time.Now()
		t.notifyLocked()
	}
	t.mu.Unlock()
	if first {
		reason := failureReason(ue.Err)
		t.log.Warn("supernode unreachable", zap.String("supernode", ue.Node), zap.String("reason", reason))
		t.emit(Event{Kind: EventUnreachable, Node: ue.Node, Reason: reason, Err: err})
	}
}

// noteReachable records that the supernode answered.
func (t *task) noteReachable() {
	t.mu.Lock()
	node := t.progress.Unreachable
	if node != "" {
		t.progress.Unreachable, t.progress.UnreachableSince = "", time.Time{}
		t.notifyLocked()
	}
	t.mu.Unlock()
	if node != "" {
		t.log.Info("supernode reachable again", zap.String("supernode", node))
		t.emit(Event{Kind: EventReachable, Node: node})
	}
}

// ErrStalled: no piece was verified for StallTimeout (always with
// ErrP2PFailed). When the supernode could not be reached, the error also
// wraps its schedclient.UnreachableError.
var ErrStalled = errors.New("no piece verified")

// stalled is the error of a download that verified no piece for
// StallTimeout; it names the supernode when the last poll could not reach
// it.
func (t *task) stalled(lastPollErr error) error {
	if errors.Is(lastPollErr, schedclient.ErrUnreachable) {
		return fmt.Errorf("%w: %w for %s: %w", ErrP2PFailed, ErrStalled, t.e.cfg.StallTimeout, lastPollErr)
	}
	return fmt.Errorf("%w: %w for %s", ErrP2PFailed, ErrStalled, t.e.cfg.StallTimeout)
}

// awaitOrigin waits while the supernode holds the task back because its
// origin is rate-limiting (info is the failed task with RetryAfter): the
// CDN alone retries the origin, so that the cluster spends one retry budget
// on it. The download registers again each time RetryAfter has passed (plus
// up to half of it, at random) until the task runs again, fails for
// another reason, or the stall deadline would pass first; the last two end
// P2P.
func (t *task) awaitOrigin(ctx context.Context, info schedapi.TaskInfo, stallAt time.Time) error {
	t.log.Info("origin rate-limited: waiting for the supernode's CDN", zap.Duration("retryAfter", info.RetryAfter), zap.String("error", info.Error))
	t.emit(Event{Kind: EventRateLimited, Reason: info.Error})
	defer func() {
		t.mu.Lock()
		t.progress.RetryAfter = time.Time{}
		t.mu.Unlock()
	}()
	for {
		wait := backoff.Jitter(info.RetryAfter) + info.RetryAfter/2
		if time.Now().Add(wait).After(stallAt) {
			return fmt.Errorf("%w: task failed on the supernode, whose origin is rate-limiting: %s", ErrP2PFailed, info.Error)
		}
		t.mu.Lock()
		t.progress.RetryAfter = time.Now().Add(wait)
		t.mu.Unlock()
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
		}

		t.mu.Lock()
		have, ps := t.verified.Clone(), t.info.PieceSize
		t.mu.Unlock()
		if have.Len() == 0 {
			have, ps = nil, 0
		}
		resp, err := t.e.sched.Register(ctx, t.registerRequest(have, ps))
		switch {
		case err != nil && errors.Is(err, schedclient.ErrInvalid):
			return fmt.Errorf("%w: register again: %w", ErrP2PFailed, err)
		case err != nil:
			t.noteUnreachable(err)
			t.log.Debug("register again", zap.Error(err))
			info.RetryAfter = pollRetryMax
			continue
		}
		t.noteReachable()
		if resp.TaskID != t.id.String() {
			return fmt.Errorf("%w: supernode moved the task to %s", ErrP2PFailed, resp.TaskID)
		}
		if resp.State == schedapi.TaskFailed {
			if resp.RetryAfter > 0 {
				info = resp.TaskInfo
				continue
			}
			return fmt.Errorf("%w: task failed on the supernode: %s", ErrP2PFailed, resp.Error)
		}
		t.log.Info("registered again after the origin's rate limit", zap.Int("pieces", have.Len()))
		if have == nil {
			// Nothing cut yet: the task as it is now, whatever the failed
			// one said of its size.
			t.mu.Lock()
			t.info = resp.TaskInfo
			t.progress.Size = resp.Size
			t.notifyLocked()
			t.mu.Unlock()
			return nil
		}
		return t.updateInfo(resp.TaskInfo)
	}
}
