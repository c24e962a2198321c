package peer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/schedclient"
)

// pollAction is what the engine does after a failed poll.
type pollAction int

const (
	// pollRetryLater: the supernode cannot be reached for now (killed,
	// restarting, overloaded): poll again after a pause, until the stall
	// timer gives up on P2P.
	pollRetryLater pollAction = iota
	// pollRegister: the supernode does not know the task or this peer in
	// it (it restarted, or the task moved to another supernode): register
	// again, declaring the verified pieces.
	pollRegister
	// pollGiveUp: P2P cannot succeed (the task failed, the request is
	// rejected).
	pollGiveUp
)

// decidePoll maps a poll error to what to do about it.
func decidePoll(err error) pollAction {
	switch {
	case errors.Is(err, schedclient.ErrTaskNotFound), errors.Is(err, schedclient.ErrPeerNotFound):
		return pollRegister
	case errors.Is(err, schedclient.ErrTaskFailed), errors.Is(err, schedclient.ErrInvalid):
		return pollGiveUp
	}
	return pollRetryLater
}

// pollFailed handles a failed poll as decidePoll says. A nil return means
// poll again after a pause.
func (t *task) pollFailed(ctx context.Context, err error, stallAt time.Time) error {
	switch decidePoll(err) {
	case pollRegister:
		return t.registerAgain(ctx, stallAt)
	case pollGiveUp:
		if errors.Is(err, schedclient.ErrTaskFailed) {
			return fmt.Errorf("%w: task failed on the supernode: %w", ErrP2PFailed, err)
		}
		return fmt.Errorf("%w: %w", ErrP2PFailed, err)
	}
	t.log.Debug("poll", zap.Error(err))
	return nil
}

// registerAgain registers with the supernode that now has the task (the
// same one restarted, or the next in the task's rendezvous order), declaring
// the pieces verified so far with the piece size they were cut with: the
// supernode counts them as held and schedules only the rest. A failure to
// register is retried with the next poll.
func (t *task) registerAgain(ctx context.Context, stallAt time.Time) error {
	t.mu.Lock()
	have, ps := t.verified.Clone(), t.info.PieceSize
	t.mu.Unlock()
	resp, err := t.e.sched.Register(ctx, t.registerRequest(have, ps))
	if err != nil {
		if errors.Is(err, schedclient.ErrInvalid) {
			return fmt.Errorf("%w: register again: %w", ErrP2PFailed, err)
		}
		t.noteUnreachable(err)
		t.log.Debug("register again", zap.Error(err))
		return nil
	}
	t.noteReachable()
	if resp.TaskID != t.id.String() {
		return fmt.Errorf("%w: supernode moved the task to %s", ErrP2PFailed, resp.TaskID)
	}
	t.log.Info("registered again", zap.Int("pieces", have.Len()))
	if resp.State == schedapi.TaskFailed && resp.RetryAfter > 0 {
		return t.awaitOrigin(ctx, resp.TaskInfo, stallAt)
	}
	return t.updateInfo(resp.TaskInfo)
}
