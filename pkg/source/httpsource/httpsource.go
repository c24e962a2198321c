// Package httpsource fetches content from http and https URLs: a
// source.Client with retries, Range requests and a body that resumes a
// broken transfer where it stopped.
//
// Fetch sends a GET (with "Range: bytes=<offset>-" for an offset, or
// "Range: bytes=<offset>-<offset+length-1>" for a bounded request, from
// offset 0 too) and
// retries 5xx, 429 and connection failures before the first byte, with
// exponential backoff that honours Retry-After. 404 and 410 are
// source.ErrNotFound, 416 is source.ErrRangeNotSatisfiable, any other
// unexpected status a *source.StatusError. A 206 must carry the range asked
// for (its end clamped to the content's size), else the fetch fails with
// ErrBadRange; so does a 200 to a request from an offset and to any bounded
// request, even from offset 0: the caller asked for a part and learns that
// the server ignores ranges, instead of getting more than it asked for.
// The body of a bounded request ends with io.EOF after its length (or at the
// content's end).
//
// The body resumes transparently after a read error, a stall (no byte for
// the idle timeout) or a clean EOF before the announced size: it asks for
// the rest with "Range: bytes=<pos>-" (or "bytes=<pos>-<end>" within a
// bounded request) and "If-Range: <validator>", the
// validator being the first response's strong ETag or else its
// Last-Modified. A server that then answers 200 has changed the content, and
// the body fails with ErrContentChanged instead of splicing two versions.
// Without any validator the body cannot resume safely and fails with
// ErrNotResumable.
//
// Request headers may carry credentials: they are never logged, nor is any
// URL's query string or user info.
package httpsource

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/redact"
	"github.com/damselfly/damselfly/pkg/source"
)

var _ source.Client = (*Client)(nil)

var (
	// ErrContentChanged: the content changed at the source while it was
	// being fetched, so the transfer cannot resume.
	ErrContentChanged = errors.New("httpsource: content changed during transfer")
	// ErrNotResumable: the transfer broke and the source gave no validator
	// (ETag, Last-Modified) to resume it safely with.
	ErrNotResumable = errors.New("httpsource: transfer cannot be resumed")
	// ErrBadRange: the source answered a range request with a range other
	// than the one asked for, or with the whole content. It is
	// source.ErrBadRange.
	ErrBadRange = source.ErrBadRange
)

const (
	defaultRetries     = 5
	defaultMinBackoff  = 200 * time.Millisecond
	defaultMaxBackoff  = 5 * time.Second
	defaultIdleTimeout = 30 * time.Second
	maxRedirects       = 10
	// drainLimit bounds how much of an error response body is read so the
	// connection can be reused.
	drainLimit = 64 << 10
)

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient sets the HTTP client (for example one whose dialer enforces
// an outbound policy). Its redirect policy is kept; a nil CheckRedirect is
// Go's default, which stops after 10 redirects and drops Authorization on
// cross-host hops.
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) {
		if hc != nil {
			c.hc = hc
		}
	}
}

// WithLogger sets the logger (default: no logging).
func WithLogger(l *zap.Logger) Option {
	return func(c *Client) {
		if l != nil {
			c.log = l
		}
	}
}

// WithRetries sets how many times a failed request is retried (default 5),
// and how many times a broken body resumes without making progress.
func WithRetries(n int) Option {
	return func(c *Client) { c.retries = max(n, 0) }
}

// WithBackoff sets the bounds of the exponential backoff between retries
// (defaults 200ms and 5s). A Retry-After longer than max is cut to max.
func WithBackoff(minimum, maximum time.Duration) Option {
	return func(c *Client) {
		if minimum > 0 {
			c.minBackoff = minimum
		}
		if maximum > 0 {
			c.maxBackoff = maximum
		}
		c.maxBackoff = max(c.maxBackoff, c.minBackoff)
	}
}

// WithIdleTimeout sets how long a body read may wait for a byte before the
// transfer counts as stalled and is resumed (default 30s).
func WithIdleTimeout(d time.Duration) Option {
	return func(c *Client) {
		if d > 0 {
			c.idleTimeout = d
		}
	}
}

// Client fetches http and https URLs.
type Client struct {
	hc          *http.Client
	log         *zap.Logger
	retries     int
	minBackoff  time.Duration
	maxBackoff  time.Duration
	idleTimeout time.Duration
}

// New returns a client.
func New(opts ...Option) *Client {
	c := &Client{
		log:         zap.NewNop(),
		retries:     defaultRetries,
		minBackoff:  defaultMinBackoff,
		maxBackoff:  defaultMaxBackoff,
		idleTimeout: defaultIdleTimeout,
	}
	for _, o := range opts {
		o(c)
	}
	if c.hc == nil {
		c.hc = &http.Client{
			Transport: http.DefaultTransport.(*http.Transport).Clone(),
			CheckRedirect: func(req *http.Request, via []*http.Request) error {
				if len(via) >= maxRedirects {
					return fmt.Errorf("stopped after %d redirects", maxRedirects)
				}
				return nil
			},
		}
	}
	return c
}

// Fetch starts fetching req.URL from req.Offset. The returned body is bound
// to ctx: cancelling ctx stops it.
func (c *Client) Fetch(ctx context.Context, req source.Request) (*source.Response, error) {
	u, err := url.Parse(req.URL)
	if err != nil {
		return nil, fmt.Errorf("fetch: parse url: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("fetch %s: scheme %q: %w", redact.URL(u.String()), u.Scheme, source.ErrUnsupported)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("fetch %s: no host", redact.URL(u.String()))
	}
	if req.Offset < 0 || req.Length < 0 {
		return nil, fmt.Errorf("fetch %s: negative offset %d or length %d", redact.URL(u.String()), req.Offset, req.Length)
	}
	end := int64(-1)
	if req.Length > 0 {
		end = req.Offset + req.Length
	}
	b := &body{
		c:      c,
		ctx:    ctx,
		url:    u,
		header: req.Header,
		pos:    req.Offset,
		end:    end,
		size:   -1,
		budget: c.retries,
	}
	resp, cancel, err := c.request(ctx, b, "")
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusOK {
		b.size = resp.ContentLength
	} else {
		_, total, _ := httpx.ParseContentRange(resp.Header.Get("Content-Range"))
		b.size = total
	}
	b.validator = validator(resp.Header)
	b.attach(resp, cancel)
	return &source.Response{Body: b, Size: b.size, Offset: req.Offset}, nil
}

// request sends GET url from b.pos (to b.end when bounded, with If-Range
// set to ifRange when not empty), retrying failures before the first byte
// within b's budget. The returned response is 200 (from 0, unbounded) or
// 206 starting at b.pos (and ending at b.end, or the content's end, when
// bounded); cancel ends its request.
func (c *Client) request(ctx context.Context, b *body, ifRange string) (*http.Response, context.CancelFunc, error) {
	for attempt := 0; ; attempt++ {
		resp, cancel, retryAfter, err := c.try(ctx, b, ifRange)
		if err == nil {
			return resp, cancel, nil
		}
		var re *retryableError
		if !errors.As(err, &re) {
			return nil, nil, err
		}
		if b.budget <= 0 {
			return nil, nil, re.err
		}
		b.budget--
		wait := c.backoff(attempt)
		if retryAfter > 0 {
			wait = min(retryAfter, c.maxBackoff)
		}
		c.log.Debug("retry source request", zap.String("url", redact.URL(b.url.String())),
			zap.Int("attempt", attempt+1), zap.Duration("wait", wait), zap.Error(re.err))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, nil, fmt.Errorf("fetch %s: %w", redact.URL(b.url.String()), ctx.Err())
		case <-t.C:
		}
	}
}

// retryableError marks a failure worth another attempt.
type retryableError struct{ err error }

func (e *retryableError) Error() string { return e.err.Error() }
func (e *retryableError) Unwrap() error { return e.err }

// try sends one request. Errors worth retrying are *retryableError, with
// the server's Retry-After when it gave one.
func (c *Client) try(ctx context.Context, b *body, ifRange string) (*http.Response, context.CancelFunc, time.Duration, error) {
	name := redact.URL(b.url.String())
	rctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, b.url.String(), nil)
	if err != nil {
		cancel()
		return nil, nil, 0, fmt.Errorf("fetch %s: %w", name, err)
	}
	for k, v := range b.header {
		req.Header[k] = v
	}
	if req.Header.Get("Accept-Encoding") == "" {
		// Offsets count stored bytes: no transparent decompression.
		req.Header.Set("Accept-Encoding", "identity")
	}
	if b.pos > 0 || b.end >= 0 {
		length := int64(0)
		if b.end >= 0 {
			length = b.end - b.pos
		}
		req.Header.Set("Range", httpx.FormatRange(b.pos, length))
		if ifRange != "" {
			req.Header.Set("If-Range", ifRange)
		}
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		cancel()
		if ctx.Err() != nil {
			return nil, nil, 0, fmt.Errorf("fetch %s: %w", name, ctx.Err())
		}
		err = fmt.Errorf("fetch %s: %w", name, stripURL(err))
		if retryable(err) {
			return nil, nil, 0, &retryableError{err}
		}
		return nil, nil, 0, err
	}
	fail := func(err error) (*http.Response, context.CancelFunc, time.Duration, error) {
		_, _ = io.CopyN(io.Discard, resp.Body, drainLimit)
		_ = resp.Body.Close()
		cancel()
		return nil, nil, 0, err
	}
	switch code := resp.StatusCode; {
	case code == http.StatusOK:
		if b.pos > 0 || b.end >= 0 {
			if ifRange != "" {
				return fail(fmt.Errorf("fetch %s: resume at %d: %w", name, b.pos, ErrContentChanged))
			}
			return fail(fmt.Errorf("fetch %s: range from %d ignored (status 200): %w", name, b.pos, ErrBadRange))
		}
		return resp, cancel, 0, nil
	case code == http.StatusPartialContent:
		rg, total, err := httpx.ParseContentRange(resp.Header.Get("Content-Range"))
		if err != nil {
			return fail(fmt.Errorf("fetch %s: %w: %w", name, ErrBadRange, err))
		}
		if rg.Start != b.pos {
			return fail(fmt.Errorf("fetch %s: asked from %d, got %d: %w", name, b.pos, rg.Start, ErrBadRange))
		}
		if b.end >= 0 {
			want := b.end - 1
			if total >= 0 {
				want = min(want, total-1)
			}
			if rg.End() != want {
				return fail(fmt.Errorf("fetch %s: asked up to %d, got %d: %w", name, want, rg.End(), ErrBadRange))
			}
		}
		if b.size >= 0 && total >= 0 && total != b.size {
			return fail(fmt.Errorf("fetch %s: size %d became %d: %w", name, b.size, total, ErrContentChanged))
		}
		return resp, cancel, 0, nil
	case code == http.StatusNotFound || code == http.StatusGone:
		return fail(fmt.Errorf("fetch %s: status %d: %w", name, code, source.ErrNotFound))
	case code == http.StatusRequestedRangeNotSatisfiable:
		return fail(fmt.Errorf("fetch %s: from %d: %w", name, b.pos, source.ErrRangeNotSatisfiable))
	case code == http.StatusTooManyRequests || code >= 500:
		after := retryAfter(resp.Header.Get("Retry-After"))
		_, _, _, err := fail(&source.StatusError{URL: name, StatusCode: code})
		return nil, nil, after, &retryableError{err}
	default:
		return fail(&source.StatusError{URL: name, StatusCode: code})
	}
}

// backoff returns the wait before retry attempt+1: exponential from the
// minimum, capped at the maximum, with jitter.
func (c *Client) backoff(attempt int) time.Duration {
	d := c.minBackoff
	for range attempt {
		d *= 2
		if d >= c.maxBackoff {
			d = c.maxBackoff
			break
		}
	}
	half := d / 2
	return half + rand.N(half+1)
}

// retryAfter parses a Retry-After header (seconds or an HTTP date); 0 when
// absent or invalid.
func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
		if secs <= 0 {
			return 0
		}
		return time.Duration(min(secs, 24*3600)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

// retryable reports whether a transport error is worth another attempt: a
// reset, refused or timed-out connection or an early EOF, but not a failed
// name lookup, a refused outbound dial, a TLS or redirect error.
func retryable(err error) bool {
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNABORTED) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return dnsErr.IsTemporary || dnsErr.IsTimeout
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// stripURL removes the *url.Error layer, whose message holds the full URL.
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// validator returns what If-Range can carry for this response: its strong
// ETag, else its Last-Modified, else "".
func validator(h http.Header) string {
	if etag := h.Get("ETag"); etag != "" && !strings.HasPrefix(etag, "W/") {
		return etag
	}
	return h.Get("Last-Modified")
}
