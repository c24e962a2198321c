package scheduler

// Task lifecycle: a task is added by the CDN (addTask), grows as its size
// becomes known and its pieces are published, and settles (succeed, fail)
// or is removed. Every function runs on the event loop.

import (
	"fmt"

	digest "github.com/opencontainers/go-digest"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/redact"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

func (st *state) addTask(spec TaskSpec) error {
	if spec.ID == "" {
		return fmt.Errorf("add task: no id: %w", ErrInvalid)
	}
	if spec.ContentDigest != "" {
		if err := spec.ContentDigest.Validate(); err != nil {
			return fmt.Errorf("add task %s: content digest: %w: %w", spec.ID, err, ErrInvalid)
		}
	}
	size := spec.Size
	if size < 0 {
		size = -1
	}
	pieceSize := spec.PieceSize
	if pieceSize <= 0 {
		pieceSize = piece.SizeFor(size)
	}
	count := piece.Count(size, pieceSize)
	if count > maxPieces {
		return fmt.Errorf("add task %s: %d pieces, more than %d: %w", spec.ID, count, maxPieces, ErrInvalid)
	}
	if old := st.tasks[spec.ID]; old != nil {
		if old.state != schedapi.TaskFailed {
			return fmt.Errorf("add task %s: %w", spec.ID, ErrTaskExists)
		}
		st.dropTask(old)
	} else if len(st.tasks) >= st.cfg.MaxTasks {
		st.log.Warn("task refused: too many tasks", zap.Stringer("task", spec.ID), zap.Int("maxTasks", st.cfg.MaxTasks))
		return fmt.Errorf("add task %s: %d tasks known (maxTasks): %w", spec.ID, len(st.tasks), ErrLimit)
	}
	t := &task{
		id:        spec.ID,
		url:       redact.URL(spec.URL),
		pieceSize: pieceSize,
		size:      size,
		count:     count,
		content:   spec.ContentDigest,
		members:   make(map[string]*member),
		strikes:   make(map[string]strikeRecord),
		accused:   make(map[string]map[string][]int),
		createdAt: st.now(),
		arriving:  -1,
	}
	t.emptySince = t.createdAt
	t.fanout = st.fanoutFor(t)
	t.grow(max(count, 0))
	st.tasks[t.id] = t
	st.setState(t, schedapi.TaskRunning)
	st.log.Info("task added", zap.Stringer("task", t.id), zap.Int64("size", size), zap.Int64("pieceSize", pieceSize))
	return nil
}

// fitCount records a now known piece count, checking nothing is published
// past it.
func (t *task) fitCount(size int64) error {
	count := piece.Count(size, t.pieceSize)
	if count > maxPieces {
		return fmt.Errorf("%d pieces, more than %d", count, maxPieces)
	}
	for i := count; i < len(t.digests); i++ {
		if t.digests[i] != "" {
			return fmt.Errorf("piece %d is published but size %d has %d pieces", i, size, count)
		}
	}
	t.grow(count)
	t.digests, t.holders, t.inflight, t.fromCDN = t.digests[:count], t.holders[:count], t.inflight[:count], t.fromCDN[:count]
	t.free = t.free[:count]
	t.size, t.count = size, count
	return nil
}

func (st *state) setSize(taskID taskid.ID, size int64) error {
	t, err := st.task(taskID)
	if err != nil {
		return fmt.Errorf("set size: %w", err)
	}
	switch {
	case size < 0:
		return fmt.Errorf("set size of task %s: negative size %d: %w", taskID, size, ErrInvalid)
	case t.size == size:
		return nil
	case t.size >= 0:
		return fmt.Errorf("set size of task %s: size is already %d, not %d: %w", taskID, t.size, size, ErrInvalid)
	}
	if err := t.fitCount(size); err != nil {
		return fmt.Errorf("set size of task %s: %s: %w", taskID, err, ErrInvalid)
	}
	return nil
}

func (st *state) publish(taskID taskid.ID, n int, d digest.Digest) error {
	t, err := st.task(taskID)
	if err != nil {
		return fmt.Errorf("publish piece %d: %w", n, err)
	}
	if err := piece.ValidateDigest(d); err != nil {
		return fmt.Errorf("publish piece %d of task %s: %w: %w", n, taskID, err, ErrInvalid)
	}
	if n < 0 || n >= maxPieces || (t.count >= 0 && n >= t.count) {
		return fmt.Errorf("publish piece %d of task %s: out of range (%d pieces): %w", n, taskID, t.count, ErrInvalid)
	}
	if t.isPublished(n) {
		if t.digests[n] == d {
			return nil
		}
		return fmt.Errorf("publish piece %d of task %s: already published as %s: %w", n, taskID, t.digests[n], ErrInvalid)
	}
	if t.state != schedapi.TaskRunning {
		return fmt.Errorf("publish piece %d of task %s: task is %s: %w", n, taskID, t.state, ErrInvalid)
	}
	t.grow(n + 1)
	t.digests[n] = d
	t.pub.set(n)
	t.published++
	if t.arriving == n {
		t.arriving = -1
	}
	st.refresh(t, n)
	return nil
}

// arrive records that the CDN's read of piece n of a task of known size has
// started (n < 0: the CDN receives no piece now). The piece stops arriving
// when it is published or another arrives.
func (st *state) arrive(taskID taskid.ID, n int) error {
	t, err := st.task(taskID)
	if err != nil {
		return fmt.Errorf("piece arriving %d: %w", n, err)
	}
	if n >= maxPieces || (n >= 0 && (t.count < 0 || n >= t.count)) {
		return fmt.Errorf("piece arriving %d of task %s: out of range (%d pieces): %w", n, taskID, t.count, ErrInvalid)
	}
	if !st.cfg.cutThrough() || t.state != schedapi.TaskRunning || t.isPublished(n) {
		n = -1
	}
	old := t.arriving
	if n < 0 {
		n = -1
	}
	if old == n {
		return nil
	}
	t.arriving = n
	if old >= 0 && old < len(t.digests) {
		st.refresh(t, old)
	}
	if n >= 0 {
		t.grow(n + 1)
		st.refresh(t, n)
	}
	return nil
}

func (st *state) succeed(taskID taskid.ID, size int64, content digest.Digest) error {
	t, err := st.task(taskID)
	if err != nil {
		return fmt.Errorf("succeed: %w", err)
	}
	if content != "" {
		if err := content.Validate(); err != nil {
			return fmt.Errorf("succeed task %s: content digest: %w: %w", taskID, err, ErrInvalid)
		}
	}
	switch {
	case size < 0:
		return fmt.Errorf("succeed task %s: negative size %d: %w", taskID, size, ErrInvalid)
	case t.size >= 0 && t.size != size:
		return fmt.Errorf("succeed task %s: size %d, expected %d: %w", taskID, size, t.size, ErrInvalid)
	case content != "" && t.content != "" && content != t.content:
		return fmt.Errorf("succeed task %s: content %s, expected %s: %w", taskID, content, t.content, ErrInvalid)
	case t.state == schedapi.TaskSucceeded:
		return nil
	case t.state != schedapi.TaskRunning:
		return fmt.Errorf("succeed task %s: task is %s: %w", taskID, t.state, ErrInvalid)
	}
	if count := piece.Count(size, t.pieceSize); t.published != count {
		return fmt.Errorf("succeed task %s: %d of %d pieces published: %w", taskID, t.published, count, ErrInvalid)
	}
	if t.size < 0 {
		if err := t.fitCount(size); err != nil {
			return fmt.Errorf("succeed task %s: %s: %w", taskID, err, ErrInvalid)
		}
	}
	if content != "" {
		t.content = content
	}
	t.piecesDigest = piece.ListDigest(t.digests[:piece.Count(size, t.pieceSize)])
	st.setState(t, schedapi.TaskSucceeded)
	st.log.Info("task succeeded", zap.Stringer("task", t.id), zap.Int64("size", size))
	return nil
}

func (st *state) fail(taskID taskid.ID, cause error) error {
	t, err := st.task(taskID)
	if err != nil {
		return fmt.Errorf("fail: %w", err)
	}
	switch t.state {
	case schedapi.TaskFailed:
		return nil
	case schedapi.TaskSucceeded:
		return fmt.Errorf("fail task %s: task succeeded: %w", taskID, ErrInvalid)
	}
	t.err = "source fetch failed"
	if cause != nil {
		t.err = cause.Error()
	}
	if len(t.err) > maxErrorLen {
		t.err = t.err[:maxErrorLen] + "..."
	}
	t.failedAt = st.now()
	// Nothing of a failed task is worth fetching any more.
	for _, m := range t.members {
		for _, a := range m.inflight {
			st.endAssignment(a, false)
		}
	}
	st.setState(t, schedapi.TaskFailed)
	st.log.Warn("task failed", zap.Stringer("task", t.id), zap.String("error", t.err))
	return nil
}

func (st *state) removeTask(taskID taskid.ID) error {
	t, err := st.task(taskID)
	if err != nil {
		return fmt.Errorf("remove: %w", err)
	}
	st.dropTask(t)
	st.log.Info("task removed", zap.Stringer("task", t.id))
	return nil
}

// dropTask forgets t: its parked polls are answered ErrTaskNotFound, its
// members leave and the slots their assignments held are freed.
func (st *state) dropTask(t *task) {
	for _, w := range t.waiters {
		w.answer(schedapi.PiecesResponse{}, fmt.Errorf("task %s: %w", t.id, ErrTaskNotFound))
	}
	t.waiters = nil
	for _, m := range t.members {
		st.dropMember(m)
	}
	st.m.taskState(t.state, "")
	delete(st.tasks, t.id)
}

func (st *state) taskInfo(taskID taskid.ID) (schedapi.TaskInfo, error) {
	t, err := st.task(taskID)
	if err != nil {
		return schedapi.TaskInfo{}, err
	}
	return t.info(), nil
}
