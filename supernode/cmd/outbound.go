package cmd

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"
)

// errDenied marks a source connection refused by the outbound policy.
var errDenied = errors.New("denied by the source policy")

// builtinDeny are networks a source is never reached at unless allowed
// explicitly: this machine, link-local addresses (cloud metadata services
// live there), unspecified and multicast addresses.
var builtinDeny = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("::/128"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("ff00::/8"),
}

// dialPolicy decides which addresses the CDN may connect to.
type dialPolicy struct {
	allow, deny []netip.Prefix
}

func newDialPolicy(c SourceConfig) (dialPolicy, error) {
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
			return fmt.Errorf("source address %s: %w (allow it with source.allow)", ip, errDenied)
		}
	}
	return nil
}

// control is a net.Dialer Control: it sees the resolved address of every
// connection, so redirects and DNS tricks cannot get around the policy.
func (p dialPolicy) control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("source address %q: %w", address, errDenied)
	}
	return p.check(ap.Addr())
}

// sourceHTTPClient returns the CDN's HTTP client: the policy is checked at
// dial time, proxies from the environment are not used, and redirects are
// bounded (Go drops Authorization on cross-host hops).
func sourceHTTPClient(p dialPolicy) *http.Client {
	dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second, Control: p.control}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.DialContext = dialer.DialContext
	tr.ResponseHeaderTimeout = 2 * time.Minute
	tr.MaxIdleConnsPerHost = 16
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 10 {
				return errors.New("stopped after 10 redirects")
			}
			return nil
		},
	}
}
