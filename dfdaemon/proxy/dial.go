package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"time"
)

// errDenied marks a connection refused by the outbound policy.
var errDenied = errors.New("denied by the proxy's outbound policy")

// dialPolicy decides which addresses the proxy may connect to.
type dialPolicy struct {
	allow, deny []netip.Prefix
}

func newDialPolicy(c OutboundConfig) (dialPolicy, error) {
	allow, err := parseNetworks(c.Allow)
	if err != nil {
		return dialPolicy{}, err
	}
	deny, err := parseNetworks(c.Deny)
	if err != nil {
		return dialPolicy{}, err
	}
	return dialPolicy{allow: allow, deny: append(deny, builtinDeny...)}, nil
}

func (p dialPolicy) check(ip netip.Addr) error {
	ip = ip.Unmap()
	for _, n := range p.allow {
		if n.Contains(ip) {
			return nil
		}
	}
	for _, n := range p.deny {
		if n.Contains(ip) {
			return fmt.Errorf("address %s: %w (allow it with outbound.allow)", ip, errDenied)
		}
	}
	return nil
}

// control is a net.Dialer Control: it sees the resolved address of every
// connection, so neither DNS nor a redirect gets around the policy.
func (p dialPolicy) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("address %q: %w", address, errDenied)
	}
	return p.check(ap.Addr())
}

// Resolver returns the addresses of a host name. It replaces DNS for the
// proxy's direct connections (WithResolver); the outbound policy still
// applies to what it returns.
type Resolver func(ctx context.Context, host string) ([]netip.Addr, error)

// dialer makes the proxy's direct connections.
type dialer struct {
	d       net.Dialer
	resolve Resolver // nil: the system resolver via net.Dialer
}

func newDialer(policy dialPolicy, timeout time.Duration, resolve Resolver) *dialer {
	return &dialer{
		d:       net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second, Control: policy.control},
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
