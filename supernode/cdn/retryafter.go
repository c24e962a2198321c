package cdn

import (
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/source"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// The CDN is the one member of a cluster that retries a rate-limiting
// origin: when a task's source fetch fails with 429 or 503 (after the
// source client's own retries, which honour Retry-After), the task is held
// for a while. Registrations during the hold get the failed task with
// TaskInfo.RetryAfter, start no fetch, and the peers wait that long and
// register again instead of each going to the origin; the first
// registration after the hold starts the next attempt. The hold doubles
// with every rate-limited failure in a row, up to maxRetryHold.
const (
	baseRetryHold = 5 * time.Second
	maxRetryHold  = time.Minute
)

type retryHolds struct {
	mu sync.Mutex
	m  map[taskid.ID]retryHold
}

type retryHold struct {
	until time.Time
	n     int // rate-limited failures in a row
}

// rateLimited reports whether a fetch failed because its origin is
// shedding load.
func rateLimited(cause error) bool {
	var se *source.StatusError
	return errors.As(cause, &se) && (se.StatusCode == http.StatusTooManyRequests || se.StatusCode == http.StatusServiceUnavailable)
}

// note records why taskID failed.
func (h *retryHolds) note(taskID taskid.ID, cause error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := time.Now()
	for id, e := range h.m { // forget holds long past
		if now.Sub(e.until) > 2*maxRetryHold {
			delete(h.m, id)
		}
	}
	if !rateLimited(cause) {
		delete(h.m, taskID)
		return
	}
	if h.m == nil {
		h.m = make(map[taskid.ID]retryHold)
	}
	e := h.m[taskID]
	d := baseRetryHold
	for i := 0; i < e.n && d < maxRetryHold; i++ {
		d *= 2
	}
	e.n++
	e.until = now.Add(min(d, maxRetryHold))
	h.m[taskID] = e
}

// left returns how long taskID is still held, 0 when it is not.
func (h *retryHolds) left(taskID taskid.ID) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	e, ok := h.m[taskID]
	if !ok {
		return 0
	}
	return max(time.Until(e.until), 0)
}

// RetryAfter returns how long peers of the failed task taskID should wait
// before registering again (the origin is rate-limiting), 0 when they need
// not.
func (c *CDN) RetryAfter(taskID taskid.ID) time.Duration {
	return c.holds.left(taskID)
}

// withRetryAfter sets info.RetryAfter for failed task id under a hold.
func (c *CDN) withRetryAfter(id taskid.ID, info schedapi.TaskInfo) schedapi.TaskInfo {
	if info.State == schedapi.TaskFailed {
		info.RetryAfter = c.holds.left(id)
	}
	return info
}

// described is an error shown by its own message that still unwraps to the
// error it describes (a *source.StatusError, for rateLimited).
type described struct {
	msg string
	err error
}

func (e *described) Error() string { return e.msg }
func (e *described) Unwrap() error { return e.err }
