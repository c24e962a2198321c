package cmd

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"

	"github.com/damselfly/damselfly/dfdaemon/proxy"
)

// errDenied: an address the outbound policy does not allow.
var errDenied = errors.New("address denied by the outbound policy")

// outboundClient returns an HTTP client whose every connection, each
// redirect hop included, is checked against the proxy's outbound policy by
// resolved IP when it is dialled: loopback, link-local, unspecified and
// multicast addresses and the Deny networks are refused unless Allow covers
// them. The forward proxy's own requests to registries (the read checks of
// the blobs it sends through P2P) go through it, so a client of the proxy
// cannot aim the node at addresses the proxy would not reach.
func outboundClient(c proxy.OutboundConfig) (*http.Client, error) {
	allow, err := parseNetworks(c.Allow)
	if err != nil {
		return nil, fmt.Errorf("proxy.outbound.allow: %w", err)
	}
	deny, err := parseNetworks(c.Deny)
	if err != nil {
		return nil, fmt.Errorf("proxy.outbound.deny: %w", err)
	}
	check := func(_, address string, _ syscall.RawConn) error {
		host, _, err := net.SplitHostPort(address)
		if err != nil {
			return err
		}
		ip, err := netip.ParseAddr(host)
		if err != nil {
			return fmt.Errorf("dial %s: %w", address, errDenied)
		}
		if !allowed(ip.Unmap(), allow, deny) {
			return fmt.Errorf("dial %s: %w", address, errDenied)
		}
		return nil
	}
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second, Control: check}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.DialContext = d.DialContext
	tr.ResponseHeaderTimeout = time.Minute
	return &http.Client{Transport: tr}, nil
}

func allowed(ip netip.Addr, allow, deny []netip.Prefix) bool {
	for _, p := range allow {
		if p.Contains(ip) {
			return true
		}
	}
	if ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.IsUnspecified() ||
		ip.IsMulticast() || ip.IsInterfaceLocalMulticast() {
		return false
	}
	for _, p := range deny {
		if p.Contains(ip) {
			return false
		}
	}
	return true
}

// parseNetworks parses CIDRs or bare IPs.
func parseNetworks(list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	var errs []error
	for _, s := range list {
		if p, err := netip.ParsePrefix(s); err == nil {
			if p.Addr().Is4In6() {
				if p.Bits() < 96 {
					errs = append(errs, fmt.Errorf("%q: an IPv4-mapped prefix needs at least 96 bits", s))
					continue
				}
				p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
			}
			out = append(out, p.Masked())
			continue
		}
		if ip, err := netip.ParseAddr(s); err == nil {
			out = append(out, netip.PrefixFrom(ip.Unmap(), ip.Unmap().BitLen()))
			continue
		}
		errs = append(errs, fmt.Errorf("%q: not a CIDR or IP address", s))
	}
	return out, errors.Join(errs...)
}
