package schedclient

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/damselfly/damselfly/pkg/schedapi"
)

var (
	// ErrUnreachable: no supernode could be reached.
	ErrUnreachable = errors.New("supernode unreachable")
	// ErrTaskNotFound: the supernode does not know the task.
	ErrTaskNotFound = errors.New("task not found")
	// ErrPeerNotFound: the supernode does not know the peer in the task; the
	// peer registers again.
	ErrPeerNotFound = errors.New("peer not found")
	// ErrTaskFailed: the task's source fetch failed on the supernode.
	ErrTaskFailed = errors.New("task failed")
	// ErrInvalid: the supernode rejected the request as malformed.
	ErrInvalid = errors.New("invalid request")
	// ErrUnavailable: the supernode is overloaded or not ready.
	ErrUnavailable = errors.New("supernode unavailable")
	// ErrUnauthenticated: the supernode refused the cluster token (none was
	// given, or not the cluster's).
	ErrUnauthenticated = errors.New("cluster token refused")
)

// APIError is a non-2xx answer from a supernode.
type APIError struct {
	StatusCode int
	Code       schedapi.ErrorCode
	Message    string
	// RetryAfter is the supernode's Retry-After (a 429 or 503 answer), 0
	// when it gave none.
	RetryAfter time.Duration
}

// Error implements error.
func (e *APIError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.StatusCode)
	}
	if e.Code != "" {
		return fmt.Sprintf("supernode: %d %s: %s", e.StatusCode, e.Code, msg)
	}
	return fmt.Sprintf("supernode: %d: %s", e.StatusCode, msg)
}

// Is matches the package sentinels by error code.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrTaskNotFound:
		return e.Code == schedapi.CodeTaskNotFound
	case ErrPeerNotFound:
		return e.Code == schedapi.CodePeerNotFound
	case ErrTaskFailed:
		return e.Code == schedapi.CodeTaskFailed
	case ErrInvalid:
		return e.Code == schedapi.CodeInvalid || (e.Code == "" && e.StatusCode == http.StatusBadRequest)
	case ErrUnavailable:
		return e.Code == schedapi.CodeUnavailable || e.StatusCode == http.StatusServiceUnavailable
	case ErrUnauthenticated:
		return e.Code == schedapi.CodeUnauthenticated || e.StatusCode == http.StatusUnauthorized
	}
	return false
}

// dialError marks a connection error where the request cannot have reached
// the server: the dial failed.
type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

func notSent(err error) bool {
	var de *dialError
	return errors.As(err, &de)
}

// UnreachableError is a supernode that could not be reached: the dial
// failed, or the connection broke or timed out before an answer. It matches
// ErrUnreachable.
type UnreachableError struct {
	// Node is the supernode's host:port.
	Node string
	Err  error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("%s %s: %v", ErrUnreachable, e.Node, e.Err)
}
func (e *UnreachableError) Unwrap() error        { return e.Err }
func (e *UnreachableError) Is(target error) bool { return target == ErrUnreachable }

func connError(node string, err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return &UnreachableError{Node: hostOf(node), Err: &dialError{err}}
	}
	return &UnreachableError{Node: hostOf(node), Err: err}
}

func hostOf(base string) string {
	_, h, _ := strings.Cut(base, "://")
	return h
}

func decodeAPIError(status int, data []byte) *APIError {
	ae := &APIError{StatusCode: status}
	var body schedapi.Error
	if json.Unmarshal(data, &body) == nil && (body.Code != "" || body.Message != "") {
		ae.Code, ae.Message = body.Code, body.Message
	} else {
		ae.Message = strings.TrimSpace(string(data))
		if len(ae.Message) > 200 {
			ae.Message = ae.Message[:200]
		}
	}
	return ae
}
