package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/damselfly/damselfly/pkg/netpolicy"
)

// Resolver returns the addresses of a host name. It replaces DNS for the
// proxy's direct connections (WithResolver); the outbound policy still
// applies to what it returns.
type Resolver func(ctx context.Context, host string) ([]netip.Addr, error)

// dialer makes the proxy's direct connections.
type dialer struct {
	d       net.Dialer
	resolve Resolver // nil: the system resolver via net.Dialer
}

func newDialer(policy netpolicy.Policy, timeout time.Duration, resolve Resolver) *dialer {
	return &dialer{
		d:       *policy.Dialer(&net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}),
		resolve: resolve,
	}
}

// DialContext connects to addr (host:port), trying each resolved address in
// turn when a Resolver is set.
func (d *dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	if d.resolve == nil {
		return d.d.DialContext(ctx, network, addr)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return d.d.DialContext(ctx, network, addr)
	}
	ips, err := d.resolve(ctx, host)
	if err != nil {
		return nil, &net.DNSError{Err: err.Error(), Name: host}
	}
	if len(ips) == 0 {
		return nil, &net.DNSError{Err: "no addresses", Name: host, IsNotFound: true}
	}
	var errs []error
	for _, ip := range ips {
		c, err := d.d.DialContext(ctx, network, net.JoinHostPort(ip.Unmap().String(), port))
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

// parsePort parses a decimal port number.
func parsePort(s string) (int, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("port %q: %w", s, err)
	}
	return int(n), nil
}
