package cdn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
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
// next source resumes where the stored pieces end, with a Range request; a
// source that ignores ranges is read from the start and must send the
// pieces already published again, byte for byte. The task's digest decides
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
		parts[i] = redactURL(c.url) + ": " + c.failed.Error()
	}
	return fmt.Errorf("all %d sources failed: %s", len(failed), strings.Join(parts, "; "))
}

// sourceFailure is a failure of the current source: the fetch goes on with
// the next candidate.
type sourceFailure struct{ err error }

func (e *sourceFailure) Error() string { return e.err.Error() }
func (e *sourceFailure) Unwrap() error { return e.err }

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// watchRate calls slow once, and returns, when the bytes read through cr
// over the last window are fewer than minRate allows while waiting reports
// another candidate to move to. It returns when ctx is done.
func watchRate(ctx context.Context, cr *countingReader, minRate int64, window time.Duration, waiting func() bool, slow func()) {
	if minRate <= 0 || window <= 0 {
		return
	}
	type sample struct {
		at time.Time
		n  int64
	}
	tick := max(window/8, 10*time.Millisecond)
	t := time.NewTicker(tick)
	defer t.Stop()
	samples := []sample{{time.Now(), cr.n.Load()}}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			samples = append(samples, sample{now, cr.n.Load()})
			// Keep the newest sample at least a window old as the base.
			cut := 0
			for i, s := range samples {
				if now.Sub(s.at) >= window {
					cut = i
				}
			}
			samples = samples[cut:]
			base := samples[0]
			span := now.Sub(base.at)
			if span < window {
				continue
			}
			got := samples[len(samples)-1].n - base.n
			if float64(got) < float64(minRate)*span.Seconds() && waiting() {
				slow()
				return
			}
		}
	}
}
