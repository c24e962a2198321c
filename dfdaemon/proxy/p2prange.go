package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"

	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/redact"
)

// serveP2PRange answers a GET with a Range from Fetcher.FetchRange, as the
// mirror answers one (see the package doc).
func (p *Proxy) serveP2PRange(w http.ResponseWriter, r *http.Request, target *url.URL) {
	ctx := r.Context()
	body, size, err := p.fetcher.FetchRange(ctx, target.String(), fetchHeader(r.Header), r.Header.Get("Range"))
	if err == nil && body == nil {
		err = errors.New("fetcher returned no body")
	}
	if errors.Is(err, httpx.ErrRangeUnsatisfiable) && size >= 0 {
		p.m.requests.WithLabelValues(routeP2P).Inc()
		h := w.Header()
		h.Set(RouteHeader, routeP2P)
		h.Set("Via", "1.1 "+viaPseudonym)
		h.Set("Content-Range", httpx.UnsatisfiedContentRange(size))
		h.Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
		_, _ = io.WriteString(w, "range not satisfiable\n")
		return
	}
	if err == nil {
		defer body.Close()
		// A Read blocked on a piece returns once the client is gone.
		stop := context.AfterFunc(ctx, func() { _ = body.Close() })
		defer stop()
		h := w.Header()
		body.SetHeader(h)
		h.Set("Accept-Ranges", "bytes")
		h.Set(RouteHeader, routeP2P)
		h.Set("Via", "1.1 "+viaPseudonym)
		lw := &httpx.LazyWriter{W: w, Status: body.Status, Flush: true}
		defer func() { p.m.bytes.WithLabelValues(routeP2P).Add(float64(lw.N)) }()
		_, err = body.WriteTo(lw)
		if err == nil {
			lw.Start()
			p.m.requests.WithLabelValues(routeP2P).Inc()
			p.log.Debug("proxy request", zap.String("route", routeP2P), zap.String("url", redact.URL(target.String())))
			return
		}
		if lw.Started() {
			p.m.requests.WithLabelValues(routeP2P).Inc()
			p.abort(target, err)
		}
		for _, k := range []string{"Content-Type", "Content-Range", "Content-Length", "Accept-Ranges", RouteHeader, "Via"} {
			h.Del(k)
		}
	}
	p.p2pFailed(w, r, target, "p2p range download", err)
}
