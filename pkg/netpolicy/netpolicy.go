// Package netpolicy decides which addresses a process may dial.
//
// A Policy is checked against the resolved IP of every connection when it
// is dialled (a net.Dialer ControlContext hook), so neither a DNS name, a
// redirect hop nor an address handed out by another party gets around it.
// By default loopback, link-local (cloud metadata services such as
// 169.254.169.254 included), unspecified, broadcast and multicast addresses
// are denied and everything else is allowed. Config.Allow overrides every
// deny; Config.Deny adds to the built-in list.
//
// Entries are a CIDR (10.0.0.0/8), a bare IP (127.0.0.1) or a host name
// (registry.internal). A host name stands for whatever it resolves to at
// the moment of the check: an allowed name allows its current addresses, a
// denied name denies them. A denied name that cannot be resolved denies
// every address not explicitly allowed (the policy fails closed); an allowed
// name that cannot be resolved allows nothing.
//
// IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) and NAT64 addresses
// (64:ff9b::a.b.c.d) are checked as the IPv4 address they reach; zones
// (fe80::1%eth0) are ignored.
package netpolicy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"time"
)

// ErrDenied marks a connection the policy refuses.
var ErrDenied = errors.New("denied by the outbound policy")

// MaxRedirects is how many redirects a client from HTTPClient follows.
const MaxRedirects = 10

// builtinDeny are the networks no connection reaches unless Allow covers
// them: this machine, link-local addresses (cloud metadata services live
// there), unspecified, broadcast and multicast addresses.
var builtinDeny = []netip.Prefix{
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("::1/128"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("::/128"),
	netip.MustParsePrefix("255.255.255.255/32"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("ff00::/8"),
}

// nat64 is the well-known NAT64 prefix (RFC 6052): its last 32 bits are an
// IPv4 address.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// Config is the YAML form of a policy.
type Config struct {
	// Allow lists networks (CIDR), IPs or host names that may be dialled
	// although Deny or the built-in list covers them, e.g. 127.0.0.1/32.
	Allow []string `yaml:"allow"`
	// Deny lists further networks, IPs or host names never dialled.
	Deny []string `yaml:"deny"`
}

// Validate reports every malformed entry, each naming its key below
// prefix (e.g. "source" gives "source.allow").
func (c Config) Validate(prefix string) error {
	if prefix != "" {
		prefix += "."
	}
	var errs []error
	for _, s := range c.Allow {
		if _, err := parseEntry(s); err != nil {
			errs = append(errs, fmt.Errorf("%sallow: %w", prefix, err))
		}
	}
	for _, s := range c.Deny {
		if _, err := parseEntry(s); err != nil {
			errs = append(errs, fmt.Errorf("%sdeny: %w", prefix, err))
		}
	}
	return errors.Join(errs...)
}

// Merge returns c with the entries of o appended.
func (c Config) Merge(o Config) Config {
	return Config{
		Allow: append(append([]string(nil), c.Allow...), o.Allow...),
		Deny:  append(append([]string(nil), c.Deny...), o.Deny...),
	}
}

// Resolver returns the addresses of a host name; it resolves the host name
// entries of a policy.
type Resolver func(ctx context.Context, host string) ([]netip.Addr, error)

// entry is one parsed Allow or Deny item: a network or a host name.
type entry struct {
	prefix netip.Prefix
	host   string
}

// Policy decides which addresses may be dialled. The zero Policy applies
// the built-in deny list only.
type Policy struct {
	allow, deny []entry
	hint        string
	resolve     Resolver
}

// Option configures New.
type Option func(*Policy)

// WithHint names, in every refusal, how to allow an address, e.g.
// "--source-allow or source.allow".
func WithHint(h string) Option {
	return func(p *Policy) { p.hint = h }
}

// WithResolver resolves host names with r instead of the system resolver:
// the host name entries of the policy and the hosts dialled by the
// Transport. What r returns is checked like any other address.
func WithResolver(r Resolver) Option {
	return func(p *Policy) { p.resolve = r }
}

// New parses c.
func New(c Config, opts ...Option) (Policy, error) {
	var p Policy
	var errs []error
	for _, s := range c.Allow {
		e, err := parseEntry(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("allow: %w", err))
		}
		p.allow = append(p.allow, e)
	}
	for _, s := range c.Deny {
		e, err := parseEntry(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("deny: %w", err))
		}
		p.deny = append(p.deny, e)
	}
	if err := errors.Join(errs...); err != nil {
		return Policy{}, err
	}
	for _, o := range opts {
		o(&p)
	}
	return p, nil
}

// parseEntry parses a CIDR, an IP or a host name.
func parseEntry(s string) (entry, error) {
	s = strings.TrimSpace(s)
	if p, err := netip.ParsePrefix(s); err == nil {
		if p.Addr().Zone() != "" {
			return entry{}, fmt.Errorf("%q: a network has no zone", s)
		}
		if p.Addr().Is4In6() {
			if p.Bits() < 96 {
				return entry{}, fmt.Errorf("%q: an IPv4-mapped prefix needs at least 96 bits", s)
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return entry{prefix: p.Masked()}, nil
	}
	if ip, err := netip.ParseAddr(s); err == nil {
		if ip.Zone() != "" {
			return entry{}, fmt.Errorf("%q: an address entry has no zone", s)
		}
		ip = canonical(ip)
		return entry{prefix: netip.PrefixFrom(ip, ip.BitLen())}, nil
	}
	if validHost(s) {
		return entry{host: strings.ToLower(strings.TrimSuffix(s, "."))}, nil
	}
	return entry{}, fmt.Errorf("%q: not a CIDR, IP address or host name", s)
}

// validHost reports whether s is a DNS host name: dot-separated labels of
// letters, digits and inner hyphens, not all digits.
func validHost(s string) bool {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return false
	}
	digitsOnly := true
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			switch {
			case c >= '0' && c <= '9':
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '-':
				digitsOnly = false
			default:
				return false
			}
		}
	}
	return !digitsOnly
}

// canonical is the address a connection to ip reaches, for matching: no
// zone, IPv4-mapped and NAT64 addresses as IPv4.
func canonical(ip netip.Addr) netip.Addr {
	ip = ip.WithZone("").Unmap()
	if ip.Is6() && nat64.Contains(ip) {
		b := ip.As16()
		return netip.AddrFrom4([4]byte(b[12:]))
	}
	return ip
}

// Check reports whether ip may be dialled; refusals wrap ErrDenied. Host
// name entries are resolved with a bounded wait.
func (p Policy) Check(ip netip.Addr) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return p.CheckContext(ctx, ip)
}

// CheckContext is Check resolving host name entries within ctx.
func (p Policy) CheckContext(ctx context.Context, ip netip.Addr) error {
	if !ip.IsValid() {
		return fmt.Errorf("invalid address: %w", ErrDenied)
	}
	ip = canonical(ip)
	for _, e := range p.allow {
		if ok, _ := p.match(ctx, e, ip); ok {
			return nil
		}
	}
	for _, e := range p.deny {
		ok, err := p.match(ctx, e, ip)
		if err != nil {
			return fmt.Errorf("address %s: deny entry %q cannot be resolved (%v): %w%s", ip, e.host, err, ErrDenied, p.hintText())
		}
		if ok {
			return fmt.Errorf("address %s: %w%s", ip, ErrDenied, p.hintText())
		}
	}
	for _, n := range builtinDeny {
		if n.Contains(ip) {
			return fmt.Errorf("address %s: %w%s", ip, ErrDenied, p.hintText())
		}
	}
	return nil
}

func (p Policy) hintText() string {
	if p.hint == "" {
		return ""
	}
	return " (allow it with " + p.hint + ")"
}

// match reports whether e covers ip, resolving a host name entry.
func (p Policy) match(ctx context.Context, e entry, ip netip.Addr) (bool, error) {
	if e.host == "" {
		return e.prefix.Contains(ip), nil
	}
	resolve := p.resolve
	if resolve == nil {
		resolve = systemResolve
	}
	addrs, err := resolve(ctx, e.host)
	if err != nil {
		return false, err
	}
	if len(addrs) == 0 {
		return false, errors.New("no addresses")
	}
	for _, a := range addrs {
		if canonical(a) == ip {
			return true, nil
		}
	}
	return false, nil
}

func systemResolve(ctx context.Context, host string) ([]netip.Addr, error) {
	return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
}

// Control is a net.Dialer ControlContext hook: it checks the resolved
// address of every connection before it is made.
func (p Policy) Control(ctx context.Context, _, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("address %q: %w", address, ErrDenied)
	}
	return p.CheckContext(ctx, ap.Addr())
}

// Dialer returns a copy of base (nil: 30 s connect timeout and keep-alive)
// whose connections are checked against p.
func (p Policy) Dialer(base *net.Dialer) *net.Dialer {
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	if base != nil {
		c := *base
		d = &c
	}
	d.Control = nil
	d.ControlContext = p.Control
	return d
}

// DialContext returns a dial function over p.Dialer(base). With a
// Resolver (WithResolver), host names are resolved by it and each address
// is tried in turn.
func (p Policy) DialContext(base *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := p.Dialer(base)
	if p.resolve == nil {
		return d.DialContext
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		if _, err := netip.ParseAddr(host); err == nil {
			return d.DialContext(ctx, network, addr)
		}
		ips, err := p.resolve(ctx, host)
		if err != nil {
			return nil, &net.DNSError{Err: err.Error(), Name: host}
		}
		if len(ips) == 0 {
			return nil, &net.DNSError{Err: "no addresses", Name: host, IsNotFound: true}
		}
		var errs []error
		for _, ip := range ips {
			c, err := d.DialContext(ctx, network, net.JoinHostPort(ip.Unmap().String(), port))
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
}

// Transport returns a clone of base (nil: http.DefaultTransport) that
// dials through p and ignores proxy environment variables: an outbound
// fetch goes to the address that was checked, not to a proxy.
func (p Policy) Transport(base *http.Transport) *http.Transport {
	if base == nil {
		base = http.DefaultTransport.(*http.Transport)
	}
	tr := base.Clone()
	tr.Proxy = nil
	tr.DialContext = p.DialContext(nil)
	tr.DialTLSContext = nil
	tr.Dial = nil    //nolint:staticcheck // cleared so DialContext is used
	tr.DialTLS = nil //nolint:staticcheck // cleared so DialContext is used
	return tr
}

// HTTPClient returns a client over p.Transport(base) that follows at most
// MaxRedirects redirects; every hop is dialled through p. Go drops
// Authorization and Cookie headers on a hop to another host.
func (p Policy) HTTPClient(base *http.Transport) *http.Client {
	return &http.Client{Transport: p.Transport(base), CheckRedirect: checkRedirect}
}

func checkRedirect(_ *http.Request, via []*http.Request) error {
	if len(via) >= MaxRedirects {
		return fmt.Errorf("stopped after %d redirects", MaxRedirects)
	}
	return nil
}

// ListFlag is a repeatable command-line flag of policy entries; each value
// may also be a comma-separated list. Set checks every entry.
type ListFlag struct{ List *[]string }

func (f ListFlag) String() string {
	if f.List == nil {
		return ""
	}
	return strings.Join(*f.List, ",")
}

// Set appends the entries of v.
func (f ListFlag) Set(v string) error {
	for s := range strings.SplitSeq(v, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		if _, err := parseEntry(s); err != nil {
			return err
		}
		*f.List = append(*f.List, s)
	}
	return nil
}
