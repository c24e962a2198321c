package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"

	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/netpolicy"
	"github.com/damselfly/damselfly/pkg/redact"
)

// serveDirect forwards r to target with the reverse proxy engine of
// net/http/httputil, which strips hop-by-hop headers, streams both bodies
// and handles protocol upgrades.
func (p *Proxy) serveDirect(w http.ResponseWriter, r *http.Request, target *url.URL, route string) {
	p.m.requests.WithLabelValues(route).Inc()
	p.log.Debug("proxy request", zap.String("route", route), zap.String("method", r.Method), zap.String("url", redact.URL(target.String())))
	cw := &countingWriter{ResponseWriter: w}
	defer func() { p.m.bytes.WithLabelValues(route).Add(float64(cw.n)) }()
	p.direct.ServeHTTP(cw, r.WithContext(context.WithValue(r.Context(), targetKey{}, target)))
}

// rewrite points the outbound request at the routed target.
func (p *Proxy) rewrite(pr *httputil.ProxyRequest) {
	target, _ := pr.In.Context().Value(targetKey{}).(*url.URL)
	if target == nil {
		target = pr.In.URL // not reached: serveDirect always sets it
	}
	u := *target
	pr.Out.URL = &u
	pr.Out.Host = ""
	pr.Out.RequestURI = ""
	if p.cfg.XForwardedFor {
		pr.SetXForwarded()
	}
	pr.Out.Header.Add("Via", protoVersion(pr.In.ProtoMajor, pr.In.ProtoMinor)+" "+viaPseudonym)
}

// addVia names the proxy in the response's Via header.
func addVia(resp *http.Response) error {
	resp.Header.Add("Via", protoVersion(resp.ProtoMajor, resp.ProtoMinor)+" "+viaPseudonym)
	return nil
}

func protoVersion(major, minor int) string {
	if major >= 2 {
		return fmt.Sprint(major)
	}
	return fmt.Sprintf("%d.%d", major, minor)
}

// directError answers a forwarded request whose origin could not be
// reached: 403 when the outbound policy denied the address, 504 on a
// timeout, 502 otherwise.
func (p *Proxy) directError(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return // the client is gone
	}
	target, _ := r.Context().Value(targetKey{}).(*url.URL)
	status, msg := dialStatus(err)
	p.log.Warn("proxy: origin request failed", zap.String("url", redact.URL(target.String())), zap.Int("status", status), zap.String("error", redact.Error(err)))
	http.Error(w, msg, status)
}

// dialStatus maps an error reaching an origin to a status and a short text.
func dialStatus(err error) (int, string) {
	var ne net.Error
	switch {
	case errors.Is(err, netpolicy.ErrDenied):
		return http.StatusForbidden, "destination denied by the proxy's outbound policy"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return http.StatusGatewayTimeout, "origin timed out"
	default:
		return http.StatusBadGateway, "origin unreachable"
	}
}

// reject answers a request the proxy refuses by itself.
func (p *Proxy) reject(w http.ResponseWriter, status int, msg string) {
	p.m.requests.WithLabelValues(routeRejected).Inc()
	w.Header().Set("Connection", "close")
	http.Error(w, msg, status)
}
