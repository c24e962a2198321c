package netpolicy_test

import (
	"context"
	"errors"
	"flag"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/netpolicy"
)

// fakeDNS is a resolver seam: names map to fixed addresses.
func fakeDNS(m map[string][]string) netpolicy.Resolver {
	return func(_ context.Context, host string) ([]netip.Addr, error) {
		ss, ok := m[host]
		if !ok {
			return nil, errors.New("no such host")
		}
		var out []netip.Addr
		for _, s := range ss {
			out = append(out, netip.MustParseAddr(s))
		}
		return out, nil
	}
}

func TestCheck(t *testing.T) {
	t.Parallel()
	dns := fakeDNS(map[string][]string{
		"registry.internal": {"10.9.9.9", "fd00::9"},
		"metadata.evil":     {"169.254.169.254"},
		"blocked.example":   {"203.0.113.7"},
	})
	p, err := netpolicy.New(netpolicy.Config{
		Allow: []string{"127.0.0.1", "::ffff:10.1.0.0/112", "registry.internal"},
		Deny:  []string{"10.0.0.0/8", "blocked.example."},
	}, netpolicy.WithResolver(dns), netpolicy.WithHint("--source-allow"))
	require.NoError(t, err)
	tests := []struct {
		ip      string
		allowed bool
	}{
		{"127.0.0.1", true},
		{"::ffff:127.0.0.1", true},
		{"127.0.0.2", false},
		{"::1", false},
		{"169.254.169.254", false},
		{"::ffff:169.254.169.254", false},
		{"64:ff9b::a9fe:a9fe", false}, // NAT64 169.254.169.254
		{"64:ff9b::5db8:d822", true},  // NAT64 93.184.216.34
		{"fe80::1", false},
		{"fe80::1%eth0", false},
		{"0.0.0.0", false},
		{"::", false},
		{"255.255.255.255", false},
		{"224.0.0.1", false},
		{"ff02::1", false},
		{"10.1.2.3", true},  // the mapped allow /112 is 10.1.0.0/16
		{"10.2.0.1", false}, // deny 10.0.0.0/8
		{"10.9.9.9", true},  // allowed by name
		{"fd00::9", true},   // allowed by name
		{"203.0.113.7", false},
		{"203.0.113.8", true},
		{"192.168.1.1", true},
		{"93.184.216.34", true},
		{"2606:4700::1", true},
	}
	for _, tt := range tests {
		err := p.Check(netip.MustParseAddr(tt.ip))
		if tt.allowed {
			require.NoError(t, err, tt.ip)
			continue
		}
		require.ErrorIs(t, err, netpolicy.ErrDenied, tt.ip)
		require.Contains(t, err.Error(), "--source-allow", tt.ip)
	}
	require.ErrorIs(t, p.Check(netip.Addr{}), netpolicy.ErrDenied)
}

func TestZeroPolicyIsTheBuiltinList(t *testing.T) {
	t.Parallel()
	var p netpolicy.Policy
	require.ErrorIs(t, p.Check(netip.MustParseAddr("127.0.0.1")), netpolicy.ErrDenied)
	require.ErrorIs(t, p.Check(netip.MustParseAddr("169.254.169.254")), netpolicy.ErrDenied)
	require.NoError(t, p.Check(netip.MustParseAddr("10.0.0.1")))
}

func TestHostEntriesFailClosed(t *testing.T) {
	t.Parallel()
	dns := fakeDNS(map[string][]string{})
	p, err := netpolicy.New(netpolicy.Config{Allow: []string{"gone.example"}, Deny: []string{"unknown.example"}},
		netpolicy.WithResolver(dns))
	require.NoError(t, err)
	err = p.Check(netip.MustParseAddr("93.184.216.34"))
	require.ErrorIs(t, err, netpolicy.ErrDenied, "an unresolvable deny name denies")
	require.Contains(t, err.Error(), "unknown.example")

	p, err = netpolicy.New(netpolicy.Config{Allow: []string{"gone.example"}}, netpolicy.WithResolver(dns))
	require.NoError(t, err)
	require.ErrorIs(t, p.Check(netip.MustParseAddr("127.0.0.1")), netpolicy.ErrDenied, "an unresolvable allow name allows nothing")
	require.NoError(t, p.Check(netip.MustParseAddr("93.184.216.34")))
}

func TestParse(t *testing.T) {
	t.Parallel()
	good := []string{"10.0.0.0/8", "127.0.0.1", "::1", "fe80::/10", "::ffff:10.0.0.0/104", "localhost", "registry.example.com.", " 10.0.0.1 ", "a-b.c"}
	for _, s := range good {
		require.NoError(t, netpolicy.Config{Allow: []string{s}}.Validate(""), s)
	}
	bad := []string{"", "10.0.0.0/33", "::ffff:0:0/90", "1.2.3.4.5", "300.1.1.1", "-bad.example", "bad_host", "a..b", "http://x", "fe80::1%eth0/64", strings.Repeat("a", 64) + ".com", "host:80"}
	for _, s := range bad {
		err := netpolicy.Config{Deny: []string{s}}.Validate("source")
		require.Error(t, err, s)
		require.Contains(t, err.Error(), "source.deny", s)
		_, err = netpolicy.New(netpolicy.Config{Allow: []string{s}})
		require.Error(t, err, s)
	}
}

func TestListFlag(t *testing.T) {
	t.Parallel()
	var list []string
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Var(netpolicy.ListFlag{List: &list}, "source-allow", "")
	require.NoError(t, fs.Parse([]string{"--source-allow", "127.0.0.1/32, ::1", "--source-allow", "registry.local"}))
	require.Equal(t, []string{"127.0.0.1/32", "::1", "registry.local"}, list)
	require.Error(t, fs.Parse([]string{"--source-allow", "10.0.0.0/99"}))
	require.Equal(t, "", netpolicy.ListFlag{}.String())
}

func TestMerge(t *testing.T) {
	t.Parallel()
	a := netpolicy.Config{Allow: []string{"10.0.0.1"}, Deny: []string{"10.0.0.0/8"}}
	m := a.Merge(netpolicy.Config{Allow: []string{"127.0.0.1"}})
	require.Equal(t, []string{"10.0.0.1", "127.0.0.1"}, m.Allow)
	require.Equal(t, []string{"10.0.0.0/8"}, m.Deny)
	require.Equal(t, []string{"10.0.0.1"}, a.Allow, "the receiver is unchanged")
}

func serve(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestHTTPClient(t *testing.T) {
	t.Parallel()
	var metadataHits atomic.Int32
	t.Cleanup(func() { require.Zero(t, metadataHits.Load(), "a denied address was reached") })
	target := serve(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/latest/meta-data/" {
			metadataHits.Add(1)
		}
		_, _ = io.WriteString(w, "ok")
	})
	port := strings.TrimPrefix(target, "http://127.0.0.1:")
	// The redirector is reached by a name the fake DNS maps to loopback:
	// the name-based allow entry admits it, nothing else on loopback is.
	dns := fakeDNS(map[string][]string{
		"origin.test":   {"127.0.0.2"},
		"metadata.test": {"169.254.169.254"},
		"sneaky.test":   {"127.0.0.1"},
	})

	t.Run("denied by default", func(t *testing.T) {
		t.Parallel()
		hc := netpolicy.Policy{}.HTTPClient(nil)
		_, err := hc.Get(target)
		require.ErrorIs(t, err, netpolicy.ErrDenied)
	})
	t.Run("allowed explicitly", func(t *testing.T) {
		t.Parallel()
		p, err := netpolicy.New(netpolicy.Config{Allow: []string{"127.0.0.1/32"}})
		require.NoError(t, err)
		resp, err := p.HTTPClient(nil).Get(target)
		require.NoError(t, err)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, "ok", string(b))
	})
	t.Run("a name resolving to a denied address", func(t *testing.T) {
		t.Parallel()
		p, err := netpolicy.New(netpolicy.Config{}, netpolicy.WithResolver(dns))
		require.NoError(t, err)
		_, err = p.HTTPClient(nil).Get("http://sneaky.test:" + port + "/")
		require.ErrorIs(t, err, netpolicy.ErrDenied)
		_, err = p.HTTPClient(nil).Get("http://metadata.test/latest/meta-data/")
		require.ErrorIs(t, err, netpolicy.ErrDenied)
	})
	t.Run("redirect hops are checked", func(t *testing.T) {
		t.Parallel()
		// The redirector listens on 127.0.0.2, the only loopback address
		// allowed; the target on 127.0.0.1 is not.
		ln, err := net.Listen("tcp", "127.0.0.2:0")
		if err != nil {
			t.Skipf("no 127.0.0.2 on this machine: %v", err)
		}
		var to atomic.Value
		redirector := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/fine" {
				_, _ = io.WriteString(w, "fine")
				return
			}
			http.Redirect(w, r, to.Load().(string), http.StatusFound)
		}))
		redirector.Listener.Close()
		redirector.Listener = ln
		redirector.Start()
		t.Cleanup(redirector.Close)
		rport := strings.TrimPrefix(redirector.URL, "http://127.0.0.2:")
		p, err := netpolicy.New(netpolicy.Config{Allow: []string{"127.0.0.2"}}, netpolicy.WithResolver(dns))
		require.NoError(t, err)
		hc := p.HTTPClient(nil)
		for _, dest := range []string{
			target + "/latest/meta-data/",                       // 127.0.0.1
			"http://169.254.169.254/latest/meta-data/",          // cloud metadata
			"http://[::ffff:169.254.169.254]/latest/meta-data/", // mapped
			"http://metadata.test/latest/meta-data/",            // a name for it
			"http://sneaky.test:" + port + "/latest/meta-data/", // a name for 127.0.0.1
		} {
			to.Store(dest)
			_, err = hc.Get("http://origin.test:" + rport + "/")
			require.ErrorIs(t, err, netpolicy.ErrDenied, dest)
		}
		to.Store("/fine")
		resp, err := hc.Get("http://origin.test:" + rport + "/start")
		require.NoError(t, err, "a hop to an allowed address is followed")
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, "fine", string(b))
	})
	t.Run("redirects are capped", func(t *testing.T) {
		t.Parallel()
		var hops atomic.Int32
		loop := serve(t, func(w http.ResponseWriter, r *http.Request) {
			hops.Add(1)
			http.Redirect(w, r, "/again", http.StatusFound)
		})
		p, err := netpolicy.New(netpolicy.Config{Allow: []string{"127.0.0.1"}})
		require.NoError(t, err)
		_, err = p.HTTPClient(nil).Get(loop)
		require.ErrorContains(t, err, "stopped after 10 redirects")
		require.Equal(t, int32(netpolicy.MaxRedirects), hops.Load())
	})
	t.Run("proxy variables are ignored", func(t *testing.T) {
		t.Parallel()
		base := http.DefaultTransport.(*http.Transport).Clone()
		base.Proxy = func(*http.Request) (*url.URL, error) { return url.Parse("http://10.0.0.1:3128") }
		require.Nil(t, netpolicy.Policy{}.Transport(base).Proxy)
	})
}
