// Package source is the contract for fetching content from where it lives (an
// HTTP server, a registry): types, interfaces and errors, no implementation.
// pkg/source/httpsource implements it for http and https URLs.
package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
)

var (
	// ErrNotFound: the source has no such content (HTTP 404, 410).
	ErrNotFound = errors.New("source content not found")
	// ErrUnsupported: the URL's scheme has no client.
	ErrUnsupported = errors.New("unsupported source")
	// ErrRangeNotSatisfiable: the requested offset is past the end.
	ErrRangeNotSatisfiable = errors.New("source range not satisfiable")
	// ErrBadRange: the source answered a range request with something
	// other than the range asked for (a 200 with the whole content, another
	// range): it cannot serve ranges, or not this one.
	ErrBadRange = errors.New("source answered another range than the one asked for")
)

// Request asks for content, the tail of it from Offset, or, with Length,
// Length bytes from Offset.
type Request struct {
	URL string
	// Header is sent with every request to the source (and, for the same
	// host only, on redirects). It may carry credentials: implementations
	// never log it.
	Header http.Header
	// Offset is the first byte wanted (0 for all of it).
	Offset int64
	// Length is how many bytes are wanted from Offset; 0 means to the end.
	// A bounded request is a range request even from Offset 0, and a
	// source that answers it with anything but that range (clamped to the
	// content's end) fails with ErrBadRange: the caller learns the source
	// ignores ranges instead of reading more than it asked for.
	Length int64
}

// Response is content being fetched.
type Response struct {
	// Body yields the bytes from Offset on, up to the request's Length
	// when it had one (then io.EOF after Length bytes, or at the content's
	// end). Implementations may resume a broken transfer transparently; a
	// Body that cannot resume returns an error from Read, never a short
	// clean EOF.
	Body io.ReadCloser
	// Size is the size of the whole content, or -1 when the source does not
	// say.
	Size int64
	// Offset is where Body starts (the request's Offset).
	Offset int64
}

// Client fetches content from one kind of source.
type Client interface {
	Fetch(ctx context.Context, req Request) (*Response, error)
}

// StatusError is an unexpected HTTP status from a source.
type StatusError struct {
	URL        string
	StatusCode int
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("source %s: unexpected status %d %s", e.URL, e.StatusCode, http.StatusText(e.StatusCode))
}
