package cdn

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// Removing tasks: an operator deletes one (content included), the scheduler
// forgets an idle one (what the CDN holds for it, content excluded).

// Delete cancels a running fetch of the task, removes the task from the
// scheduler and deletes its cached content and metadata. Content is shared
// by digest: the other tasks served from the same content (the digest task,
// URL tasks that resolved to it) are removed from the scheduler too, and
// fetched again by their next registration. Delete returns an error
// wrapping ErrNotFound when there was nothing to delete.
func (c *CDN) Delete(ctx context.Context, taskID taskid.ID) error {
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
	d, byDigest := taskID.Digest()
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
			others = tasksOf(d, others)
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
				c.log.Info("task sharing deleted content removed", zap.Stringer("task", other), zap.Stringer("deleted", taskID))
			}
			if _, isDigest := other.Digest(); !isDigest {
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
		c.forgetChecked(d)
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
	c.log.Info("task deleted", zap.Stringer("task", taskID))
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
func (c *CDN) Forget(ctx context.Context, taskID taskid.ID) error {
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
	if _, byDigest := taskID.Digest(); !byDigest {
		if err := c.cache.removeTask(taskID); err != nil {
			return fmt.Errorf("forget task %s: %w", taskID, err)
		}
	}
	// The fetch removed its ingest as it stopped; one left by an error
	// goes here. An ingest a new fetch holds is left to it.
	if im, ok := c.store.(content.IngestManager); ok {
		err := im.Abort(ctx, taskID.FileName())
		if err != nil && !errors.Is(err, content.ErrNotFound) && !errors.Is(err, content.ErrUnavailable) {
			return fmt.Errorf("forget task %s: %w", taskID, err)
		}
	}
	c.mu.Lock()
	delete(c.sourceBytes, taskID)
	c.mu.Unlock()
	c.log.Debug("task forgotten", zap.Stringer("task", taskID), zap.Bool("fetchCancelled", f != nil))
	return nil
}
