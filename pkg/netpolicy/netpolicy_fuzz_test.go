package netpolicy_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/damselfly/damselfly/pkg/netpolicy"
)

// fixedResolver answers every host name with 127.0.0.1 and never reaches
// DNS.
func fixedResolver(context.Context, string) ([]netip.Addr, error) {
	return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
}

// reachesLocal reports whether a connection to ip reaches this machine, a
// link-local host (cloud metadata) or a multicast group, computed
// independently of the package: IPv4-mapped and NAT64 forms included.
func reachesLocal(ip netip.Addr) bool {
	ip = ip.WithZone("").Unmap()
	if ip.Is6() && netip.MustParsePrefix("64:ff9b::/96").Contains(ip) {
		b := ip.As16()
		ip = netip.AddrFrom4([4]byte(b[12:]))
	}
	return ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.IsMulticast() || ip.IsUnspecified()
}

// FuzzDefaultPolicy: whatever form an address takes, the default policy
// refuses every one that reaches this machine, a link-local host or a
// multicast group, at Check and at the dial-time Control hook.
func FuzzDefaultPolicy(f *testing.F) {
	for _, s := range []string{
		"127.0.0.1:80", "[::1]:80", "169.254.169.254:80", "[fe80::1%eth0]:80", "0.0.0.0:80", "[::]:80",
		"[::ffff:127.0.0.1]:80", "[::ffff:169.254.169.254]:80", "[64:ff9b::7f00:1]:80", "[64:ff9b::a9fe:a9fe]:80",
		"224.0.0.1:80", "[ff02::1]:80", "255.255.255.255:80", "10.0.0.1:80", "8.8.8.8:53", "[2001:db8::1]:443",
		"127.1:80", "0x7f.0.0.1:80", "localhost:80", "", "1.2.3.4", "[::1]", "[::1]:99999",
	} {
		f.Add(s)
	}
	p, err := netpolicy.New(netpolicy.Config{}, netpolicy.WithResolver(fixedResolver))
	if err != nil {
		f.Fatal(err)
	}
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, address string) {
		err := p.Control(ctx, "tcp", address, nil)
		if err != nil && !errors.Is(err, netpolicy.ErrDenied) {
			t.Fatalf("Control(%q) = %v, not ErrDenied", address, err)
		}
		ap, perr := netip.ParseAddrPort(address)
		if perr != nil {
			if err == nil {
				t.Fatalf("Control(%q) allowed an address that does not parse", address)
			}
			return
		}
		if reachesLocal(ap.Addr()) && err == nil {
			t.Fatalf("Control(%q) allowed a local, link-local or multicast address", address)
		}
		if cerr := p.CheckContext(ctx, ap.Addr()); (cerr == nil) != (err == nil) {
			t.Fatalf("Control(%q) = %v but Check = %v", address, err, cerr)
		}
	})
}

// FuzzPolicyEntry: an --source-allow/--source-deny entry is accepted by
// Validate exactly when New accepts it; an accepted address or network
// entry allows (or denies) the addresses it covers, whatever the built-in
// list says.
func FuzzPolicyEntry(f *testing.F) {
	for _, s := range []string{
		"127.0.0.1/32", "127.0.0.1", "::1", "10.0.0.0/8", "::ffff:127.0.0.0/104", "::ffff:0.0.0.0/8",
		"fe80::1%eth0", "fe80::/10%x", "registry.local", "localhost", "1.2.3", "-a.b", "a..b", "", " ",
		"0.0.0.0/0", "::/0", "169.254.169.254", strings.Repeat("a", 64) + ".b", "64:ff9b::7f00:1",
	} {
		f.Add(s, []byte{127, 0, 0, 1})
	}
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, entry string, raw []byte) {
		verr := netpolicy.Config{Allow: []string{entry}}.Validate("source")
		allow, aerr := netpolicy.New(netpolicy.Config{Allow: []string{entry}}, netpolicy.WithResolver(fixedResolver))
		deny, derr := netpolicy.New(netpolicy.Config{Deny: []string{entry}}, netpolicy.WithResolver(fixedResolver))
		if (verr == nil) != (aerr == nil) || (aerr == nil) != (derr == nil) {
			t.Fatalf("entry %q: Validate %v, New allow %v, New deny %v", entry, verr, aerr, derr)
		}
		if aerr != nil {
			if !strings.Contains(verr.Error(), "source.allow") {
				t.Fatalf("entry %q: error %q does not name its key", entry, verr)
			}
			return
		}
		var ip netip.Addr
		switch len(raw) {
		case 4:
			ip = netip.AddrFrom4([4]byte(raw))
		case 16:
			ip = netip.AddrFrom16([16]byte(raw))
		default:
			return
		}
		if ip.Is4In6() || netip.MustParsePrefix("64:ff9b::/96").Contains(ip) {
			// Matched as the IPv4 address they reach, not against IPv6
			// entries: FuzzDefaultPolicy covers them.
			return
		}
		s := strings.TrimSpace(entry)
		covered := false
		if pfx, err := netip.ParsePrefix(s); err == nil {
			covered = pfx.Contains(ip)
		} else if a, err := netip.ParseAddr(s); err == nil {
			covered = a == ip
		}
		if !covered {
			return
		}
		if err := allow.CheckContext(ctx, ip); err != nil {
			t.Fatalf("allow %q: %s refused: %v", entry, ip, err)
		}
		if err := deny.CheckContext(ctx, ip); !errors.Is(err, netpolicy.ErrDenied) {
			t.Fatalf("deny %q: %s allowed", entry, ip)
		}
	})
}
