package cdn

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/backoff"
	"github.com/damselfly/damselfly/pkg/redact"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// Sources are candidates, not owners. Every member registering for a digest
// task offers the source it knows (its URL and the headers for it); the CDN
// keeps up to maxCandidates of them per task and fetches from one at a time,
// in the order they were first offered. It gives a source up for the next
// one when it fails (an error status, a broken or stalled transfer that
// cannot resume); when it announces more than Config.MaxSourceSize, a size
// other than the one its member knows, a size none of the offering members
// knows (while any knows one) or, after the first, a size other than the
// task's; when it has not answered, or has sent less than
// Config.MinSourceRate, over Config.MinSourceRateWindow while another
// candidate is waiting (a slow source with no alternative is kept). The
// next source resumes at the first piece neither stored nor being fetched,
// with a Range request; a source that ignores ranges is read from the start
// and must send the pieces already published again, byte for byte. Demand
// requests (demand.go) ask the source the stream is reading at the time and
// never fail a candidate over: the stream does. The task's digest decides
// at the end; a source whose bytes alone failed it is blamed and not tried
// again for that task, whoever offers it, until the task is forgotten or
// deleted. A URL task has exactly one source, its URL with the headers of
// the registration that started the fetch.
//
// Candidates live in memory only (their headers may carry credentials, and
// are never logged): from the first offer until the fetch they served ends
// or the task is forgotten. When the set is full, a failed candidate, else
// the oldest not tried yet, makes room for a new offer.

// errLied is the failure of a source blamed for a digest mismatch.
var errLied = errors.New("source sent content that did not match the task's digest before")

// maxCandidates bounds the sources kept for one task (and the sources
// blamed for it).
const maxCandidates = 8

// errStalled is the failure of a source that sent less than
// Config.StallRate, alone or not.
var errStalled = errors.New("source stalled")

// errTooSlow is the failure of a source that sent less than the minimum
// rate while another candidate was waiting.
var errTooSlow = errors.New("source too slow")

// candidate is one offered source. Its fields are guarded by the mutex of
// the candidates holding it.
type candidate struct {
	url    string
	header http.Header // never logged
	// size is the content size the offering member knows, 0 when it does
	// not.
	size int64
	// tried is set once the candidate was handed out; failed says why it
	// was given up.
	tried  bool
	failed error
}

// candidates is the set of sources offered for one task. It is safe for
// concurrent use.
type candidates struct {
	mu   sync.Mutex
	list []*candidate
}

func newCandidates(req Request) *candidates {
	cs := &candidates{}
	cs.offer(req)
	return cs
}

// offer adds req's source unless the same URL with the same headers is
// already there. When the set is full, a failed candidate makes room, else
// the oldest one not handed out yet: a member offering a source now is
// likely waiting for it. It reports whether the source was added.
func (cs *candidates) offer(req Request) bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for _, c := range cs.list {
		if c.url == req.URL && sameHeader(c.header, req.Header) {
			if c.size <= 0 && req.Size > 0 {
				c.size = req.Size
			}
			return false
		}
	}
	if len(cs.list) >= maxCandidates {
		i := slices.IndexFunc(cs.list, func(c *candidate) bool { return c.failed != nil })
		if i < 0 {
			i = slices.IndexFunc(cs.list, func(c *candidate) bool { return !c.tried })
		}
		if i < 0 {
			return false
		}
		cs.list = slices.Delete(cs.list, i, i+1)
	}
	cs.list = append(cs.list, &candidate{url: req.URL, header: req.Header.Clone(), size: max(req.Size, 0)})
	return true
}

// sameHeader reports whether a and b hold the same values.
func sameHeader(a, b http.Header) bool {
	return maps.EqualFunc(a, b, slices.Equal[[]string])
}

// refuse marks the candidates of the given URLs not tried yet as failed
// with err.
func (cs *candidates) refuse(urls []string, err error) {
	if len(urls) == 0 {
		return
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for _, c := range cs.list {
		if !c.tried && slices.Contains(urls, c.url) {
			c.tried, c.failed = true, err
		}
	}
}

// next hands out the first candidate not tried yet, or nil.
func (cs *candidates) next() *candidate {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for _, c := range cs.list {
		if !c.tried {
			c.tried = true
			return c
		}
	}
	return nil
}

// retry hands c out again on the next call to next (a stalled source asked
// once more).
func (cs *candidates) retry(c *candidate) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	c.tried = false
}

// waiting reports whether a candidate is left to try.
func (cs *candidates) waiting() bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return slices.ContainsFunc(cs.list, func(c *candidate) bool { return !c.tried })
}

// fail records why c was given up.
func (cs *candidates) fail(c *candidate, err error) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	c.failed = err
}

// request returns what to send to c's source.
func (cs *candidates) request(c *candidate) (url string, header http.Header, size int64) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return c.url, c.header, c.size
}

// knownSizes returns the content sizes the offering members know, without
// repeats.
func (cs *candidates) knownSizes() []int64 {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	var sizes []int64
	for _, c := range cs.list {
		if c.size > 0 && !slices.Contains(sizes, c.size) {
			sizes = append(sizes, c.size)
		}
	}
	slices.Sort(sizes)
	return sizes
}

// failure says why every candidate failed: the one error when there was
// one source, else each source (redacted) with its error.
func (cs *candidates) failure() error {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	var failed []*candidate
	for _, c := range cs.list {
		if c.failed != nil {
			failed = append(failed, c)
		}
	}
	switch len(failed) {
	case 0:
		return errors.New("no source left to fetch from")
	case 1:
		return failed[0].failed
	}
	parts := make([]string, len(failed))
	for i, c := range failed {
		parts[i] = redact.URL(c.url) + ": " + c.failed.Error()
	}
	return fmt.Errorf("all %d sources failed: %s", len(failed), strings.Join(parts, "; "))
}

// sourceFailure is a failure of the current source: the fetch goes on with
// the next candidate.
type sourceFailure struct{ err error }

func (e *sourceFailure) Error() string { return e.err.Error() }
func (e *sourceFailure) Unwrap() error { return e.err }

// offer adds req's source to the candidates of the task's running fetch,
// or, with start, to those of the fetch about to start.
func (c *CDN) offer(req Request, start bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cs := c.pending[req.TaskID]
	if f := c.fetches[req.TaskID]; f != nil {
		cs = f.cands
	} else if cs == nil && start && !c.closed {
		cs = &candidates{}
		c.pending[req.TaskID] = cs
	}
	if cs != nil && cs.offer(req) {
		cs.refuse(c.blamed[req.TaskID], errLied)
		c.log.Debug("source offered", zap.Stringer("task", req.TaskID), zap.String("source", redact.URL(req.URL)), zap.Int64("size", req.Size))
	}
}

// blame remembers that url's content failed the digest of a task.
func (c *CDN) blame(taskID taskid.ID, url string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.blamed[taskID]
	if slices.Contains(b, url) {
		return
	}
	if len(b) >= maxCandidates {
		b = b[1:]
	}
	c.blamed[taskID] = append(b, url)
	c.log.Warn("source blamed for a digest mismatch: not used for this task again", zap.Stringer("task", taskID), zap.String("source", redact.URL(url)))
}

// dropPending forgets the sources offered for a fetch that did not start.
func (c *CDN) dropPending(taskID taskid.ID) {
	c.mu.Lock()
	delete(c.pending, taskID)
	c.mu.Unlock()
}

// stallPause is the pause before a stalled source is asked again: a tenth
// of the rate window (1s by default, at least 50ms), doubled for each
// attempt after the first, jittered.
func stallPause(window time.Duration, attempt int) time.Duration {
	base := min(max(window/10, 50*time.Millisecond), time.Second)
	return backoff.Jitter(base << min(max(attempt-1, 0), 5))
}

// sleepCtx waits d, or until ctx ends (its error).
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
