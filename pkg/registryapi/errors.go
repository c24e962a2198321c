package registryapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strconv"

	"github.com/distribution/distribution/v3/registry/api/errcode"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/manifestcache"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
)

const errGroup = "damselfly.registry"

var (
	// ErrorCodeUpstream is the error code of a 502: the upstream registry
	// answered with a server error, or with content that does not match its
	// digest.
	ErrorCodeUpstream = errcode.Register(errGroup, errcode.ErrorDescriptor{
		Value:          "UPSTREAM_ERROR",
		Message:        "upstream registry error",
		Description:    "The upstream registry answered with a server error or with content that does not match its digest.",
		HTTPStatusCode: http.StatusBadGateway,
	})
	// ErrorCodeNotFound is the error code of a 404 for a path that is not
	// part of the distribution read API.
	ErrorCodeNotFound = errcode.Register(errGroup, errcode.ErrorDescriptor{
		Value:          "NOT_FOUND",
		Message:        "no such endpoint",
		Description:    "The path is not part of the registry read API.",
		HTTPStatusCode: http.StatusNotFound,
	})
)

// ErrUnavailable marks an upstream that could not give an answer: it could
// not be reached, timed out, answered 5xx or 429, or sent content that does
// not match its digest. Backends wrap the cause in it;
// manifestcache.ErrUnavailable is treated alike.
var ErrUnavailable = errors.New("upstream registry unavailable")

// fail logs a failed request where it is handled and answers it.
func (f *Front) fail(w http.ResponseWriter, r *http.Request, upstream *url.URL, what string, err error, notFound errcode.ErrorCode) {
	status := serveError(w, err, notFound)
	if status >= 500 && r.Context().Err() == nil {
		fields := []zap.Field{zap.String("method", r.Method), zap.String("what", what), zap.Int("status", status), zap.Error(err)}
		if upstream != nil {
			fields = append(fields, zap.String("upstream", upstream.Host))
		}
		f.log.Warn("registry request failed", fields...)
	}
}

// serveError writes err as distribution error JSON with its status, and
// returns the status. It is the one place errors become statuses. notFound
// is the code of an upstream 404 that came without error JSON (the
// route's: MANIFEST_UNKNOWN, BLOB_UNKNOWN, NAME_UNKNOWN).
func serveError(w http.ResponseWriter, err error, notFound errcode.ErrorCode) int {
	h := w.Header()
	var (
		ec errcode.ErrorCoder
		re *registrysource.ResponseError
	)
	unavailable := errors.Is(err, ErrUnavailable) || errors.Is(err, manifestcache.ErrUnavailable)
	switch {
	case errors.As(err, &ec):
		// Already an errcode: our own validation, or a backend's answer.
		if e, ok := ec.(error); ok {
			err = e
		}
	case errors.Is(err, ErrNotAllowed):
		err = errcode.ErrorCodeDenied.WithMessage(err.Error())
	case errors.Is(err, manifestcache.ErrBadRequest):
		err = errcode.ErrorCodeNameInvalid.WithMessage(err.Error())
	case errors.Is(err, manifestcache.ErrNotFound):
		err = errcode.ErrorCodeManifestUnknown
	case unavailable && errors.As(err, &re) && re.StatusCode == http.StatusTooManyRequests:
		copyHeaders(h, re.Header, "Retry-After")
		err = errcode.ErrorCodeTooManyRequests
	case unavailable && errors.As(err, &re) && re.StatusCode == http.StatusServiceUnavailable:
		copyHeaders(h, re.Header, "Retry-After")
		err = errcode.ErrorCodeUnavailable.WithMessage("upstream registry unavailable")
	case unavailable && unreachable(err):
		err = errcode.ErrorCodeUnavailable.WithMessage("upstream registry unreachable")
	case unavailable, errors.Is(err, registrysource.ErrDigestMismatch):
		err = ErrorCodeUpstream
	case errors.As(err, &re):
		return servePassedError(w, re, notFound)
	case errors.Is(err, registrysource.ErrInvalid):
		err = errcode.ErrorCodeNameInvalid.WithMessage("invalid name or reference")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		err = errcode.ErrorCodeUnavailable.WithMessage("request ended before the upstream answered")
	default:
		err = errcode.ErrorCodeUnknown
	}
	status := http.StatusInternalServerError
	if c, ok := err.(errcode.ErrorCoder); ok {
		status = c.ErrorCode().Descriptor().HTTPStatusCode
	}
	_ = errcode.ServeJSON(w, err)
	return status
}

// servePassedError answers with the upstream's 4xx: its status, challenge
// and rate-limit headers, and its error JSON when it sent some.
func servePassedError(w http.ResponseWriter, re *registrysource.ResponseError, notFound errcode.ErrorCode) int {
	h := w.Header()
	copyHeaders(h, re.Header, "WWW-Authenticate", "Retry-After")
	var errs errcode.Errors
	if up := re.Errors(); len(up) > 0 {
		errs = up
	} else {
		switch re.StatusCode {
		case http.StatusUnauthorized:
			errs = errcode.Errors{errcode.ErrorCodeUnauthorized}
		case http.StatusForbidden:
			errs = errcode.Errors{errcode.ErrorCodeDenied}
		case http.StatusTooManyRequests:
			errs = errcode.Errors{errcode.ErrorCodeTooManyRequests}
		case http.StatusNotFound:
			errs = errcode.Errors{notFound.WithMessage("not found upstream")}
		default:
			errs = errcode.Errors{ErrorCodeUpstream.WithMessage("upstream answered " + strconv.Itoa(re.StatusCode))}
		}
	}
	status := re.StatusCode
	if status < 400 || status > 499 {
		status = http.StatusBadGateway
	}
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(errs); err != nil {
		status = http.StatusBadGateway
		buf.Reset()
		buf.WriteString(`{"errors":[{"code":"UPSTREAM_ERROR","message":"upstream registry error"}]}` + "\n")
	}
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
	return status
}

func copyHeaders(dst, src http.Header, keys ...string) {
	for _, k := range keys {
		for _, v := range src.Values(k) {
			dst.Add(k, v)
		}
	}
}

// unreachable reports a failure to reach the upstream at all: a name that
// does not resolve, a refused or failed dial, or a timeout.
func unreachable(err error) bool {
	var (
		ne  net.Error
		oe  *net.OpError
		dns *net.DNSError
	)
	return (errors.As(err, &oe) && oe.Op == "dial") || errors.As(err, &dns) ||
		(errors.As(err, &ne) && ne.Timeout()) || errors.Is(err, context.DeadlineExceeded)
}
