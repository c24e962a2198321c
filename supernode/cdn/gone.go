package cdn

import (
	"context"
	"errors"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// settledDigest returns the content digest of a task the scheduler holds as
// succeeded, and false for any other task.
func (c *CDN) settledDigest(ctx context.Context, taskID taskid.ID) (digest.Digest, bool) {
	info, err := c.sched.TaskInfo(ctx, taskID)
	if err != nil || info.State != schedapi.TaskSucceeded {
		return "", false
	}
	d := digest.Digest(info.ContentDigest)
	if piece.ValidateDigest(d) != nil {
		return "", false
	}
	return d, true
}

// dropIfGone removes a succeeded task whose content has vanished from the
// store (the data directory was wiped or lost under the running supernode)
// and reports whether it did. Peers still in the task learn on their next
// poll that it is gone and register again with the pieces they hold; that
// registration fetches the content from the source again. A task being
// fetched, or not succeeded, is left alone.
func (c *CDN) dropIfGone(ctx context.Context, taskID taskid.ID) bool {
	c.dropMu.Lock()
	defer c.dropMu.Unlock()
	c.mu.Lock()
	_, running := c.fetches[taskID]
	c.mu.Unlock()
	if running {
		return false
	}
	d, ok := c.settledDigest(ctx, taskID)
	if !ok {
		return false
	}
	if _, err := c.store.Info(ctx, d); !errors.Is(err, content.ErrNotFound) {
		return false
	}
	log := c.log.With(zap.Stringer("task", taskID), zap.Stringer("digest", d))
	if err := c.sched.RemoveTask(ctx, taskID); err != nil {
		log.Warn("drop task whose content is gone", zap.Error(err))
		return false
	}
	if _, byDigest := taskID.Digest(); !byDigest {
		if err := c.cache.removeTask(taskID); err != nil {
			log.Warn("drop task whose content is gone", zap.Error(err))
		}
	}
	if err := c.cache.removeMeta(d); err != nil {
		log.Warn("drop task whose content is gone", zap.Error(err))
	}
	c.metrics.contentGone.Inc()
	log.Warn("cached content is gone from the store; task dropped, its next registration fetches it again")
	return true
}
