package proxy

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/damselfly/damselfly/pkg/bytesize"
	"github.com/damselfly/damselfly/pkg/netpolicy"
)

// Defaults applied by Config.ApplyDefaults.
const (
	DefaultDialTimeout           = 30 * time.Second
	DefaultResponseHeaderTimeout = 2 * time.Minute
	DefaultTunnelIdleTimeout     = 5 * time.Minute
	DefaultTLSHandshakeTimeout   = 10 * time.Second
	DefaultReadHeaderTimeout     = 30 * time.Second
	DefaultMaxHeaderBytes        = 64 << 10
	DefaultLeafValidity          = 24 * time.Hour
	DefaultCertCacheSize         = 1024
)

// DefaultConnectPorts are the ports CONNECT may reach when
// Config.ConnectPorts is empty.
var DefaultConnectPorts = []int{443}

// ErrInvalid marks every configuration problem reported by Validate.
var ErrInvalid = errors.New("invalid proxy configuration")

// Config configures the forward proxy. The zero value, once ApplyDefaults
// has run, is a working proxy that sends everything direct and tunnels
// CONNECT to port 443.
type Config struct {
	// Rules decide, per request URL, whether a GET goes through the P2P
	// network. The first rule whose regex matches the full URL wins; a URL
	// no rule matches is forwarded directly.
	Rules []Rule `yaml:"rules"`
	// Hijack lists the hosts whose CONNECT tunnels are intercepted (TLS
	// terminated with a certificate signed by the user's CA) so that their
	// requests go through Rules too.
	Hijack HijackConfig `yaml:"hijack"`
	// Outbound is the policy every direct connection of the proxy (forwarded
	// requests, CONNECT tunnels, each redirect target) is checked against at
	// dial time, by resolved IP address.
	Outbound OutboundConfig `yaml:"outbound"`
	// ConnectPorts are the destination ports CONNECT may reach; others are
	// answered 403. Default: 443 only.
	ConnectPorts []int `yaml:"connectPorts"`
	// DisableFallback answers 502 when the P2P network fails before the
	// first byte of a response. By default such a request is forwarded
	// directly to its origin instead.
	DisableFallback bool `yaml:"disableFallback"`
	// XForwardedFor adds the client's address to X-Forwarded-For (and sets
	// X-Forwarded-Host and -Proto) on forwarded requests. Off by default: a
	// forward proxy does not reveal its clients' addresses.
	XForwardedFor bool `yaml:"xForwardedFor"`
	// MaxHeaderBytes bounds the size of a request's header section (request
	// line and fields); a larger request is answered 431. The dfdaemon
	// listener should use the same bound.
	MaxHeaderBytes bytesize.Size `yaml:"maxHeaderBytes"`
	// DialTimeout bounds connecting to an origin, for forwarded requests and
	// CONNECT tunnels.
	DialTimeout time.Duration `yaml:"dialTimeout"`
	// ResponseHeaderTimeout bounds the wait for an origin's response header
	// once a forwarded request is sent.
	ResponseHeaderTimeout time.Duration `yaml:"responseHeaderTimeout"`
	// TunnelIdleTimeout closes a CONNECT tunnel after this long with no
	// byte in either direction, and an intercepted connection after this
	// long between requests.
	TunnelIdleTimeout time.Duration `yaml:"tunnelIdleTimeout"`
	// TLSHandshakeTimeout bounds the TLS handshake with the client on an
	// intercepted CONNECT, and with origins on forwarded https requests.
	TLSHandshakeTimeout time.Duration `yaml:"tlsHandshakeTimeout"`
	// ReadHeaderTimeout bounds reading one request header on an intercepted
	// connection.
	ReadHeaderTimeout time.Duration `yaml:"readHeaderTimeout"`
}

// Rule routes the requests whose URL matches Regex.
type Rule struct {
	// Regex is matched against the full request URL (scheme, host, path
	// and query), e.g. `^https://[^/]+/v2/.+/blobs/sha256:`.
	Regex string `yaml:"regex"`
	// UseP2P sends matching GETs through the P2P network; false forwards
	// them directly (useful to exempt URLs from a broader rule below).
	UseP2P bool `yaml:"useP2P"`
	// Redirect optionally rewrites the URL before it is fetched. A bare
	// host[:port] replaces the URL's host; a value with a scheme
	// ("https://mirror.example.com/$1") is a regexp replacement template
	// applied to the whole URL with Regex, so $1… refer to its groups.
	Redirect string `yaml:"redirect,omitempty"`
}

// HijackConfig configures HTTPS interception of CONNECT tunnels.
type HijackConfig struct {
	// CACert is a PEM file with the CA certificate leaf certificates are
	// signed with. Clients must trust it.
	CACert string `yaml:"caCert"`
	// CAKey is the PEM file of CACert's private key (PKCS#8, EC or PKCS#1).
	CAKey string `yaml:"caKey"`
	// Hosts are regexes matched against the host name of a CONNECT (no
	// port), e.g. `^registry-1\.docker\.io$`. A tunnel to a matching host
	// is intercepted; any other is a plain TCP tunnel.
	Hosts []string `yaml:"hosts"`
	// LeafValidity is how long a generated leaf certificate is valid.
	LeafValidity time.Duration `yaml:"leafValidity"`
	// CertCacheSize bounds how many leaf certificates (one per host) are
	// kept.
	CertCacheSize int `yaml:"certCacheSize"`
}

// OutboundConfig is the address policy of direct connections
// (pkg/netpolicy): loopback, link-local (cloud metadata), unspecified and
// multicast addresses are denied unless Allow covers them; Deny adds
// entries. Entries are CIDRs, IPs or host names. dfdaemon gives the proxy
// its node-wide source policy with these entries added.
type OutboundConfig = netpolicy.Config

// ApplyDefaults returns c with every unset field set to its default.
func (c Config) ApplyDefaults() Config {
	if len(c.ConnectPorts) == 0 {
		c.ConnectPorts = append([]int(nil), DefaultConnectPorts...)
	}
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = DefaultDialTimeout
	}
	if c.ResponseHeaderTimeout == 0 {
		c.ResponseHeaderTimeout = DefaultResponseHeaderTimeout
	}
	if c.TunnelIdleTimeout == 0 {
		c.TunnelIdleTimeout = DefaultTunnelIdleTimeout
	}
	if c.TLSHandshakeTimeout == 0 {
		c.TLSHandshakeTimeout = DefaultTLSHandshakeTimeout
	}
	if c.ReadHeaderTimeout == 0 {
		c.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if c.Hijack.LeafValidity == 0 {
		c.Hijack.LeafValidity = DefaultLeafValidity
	}
	if c.Hijack.CertCacheSize == 0 {
		c.Hijack.CertCacheSize = DefaultCertCacheSize
	}
	return c
}

// Validate reports every problem of c, joined; each wraps ErrInvalid and
// names its key. It reads the hijack CA files, so a missing, unparsable or
// mismatched CA is reported here.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("proxy."+format+": %w", append(args, ErrInvalid)...))
	}
	for i, r := range c.Rules {
		if err := r.validate(); err != nil {
			bad("rules[%d]: %v", i, err)
		}
	}
	for i, h := range c.Hijack.Hosts {
		if _, err := regexp.Compile(h); err != nil {
			bad("hijack.hosts[%d] %q: %v", i, h, err)
		}
	}
	if len(c.Hijack.Hosts) > 0 || c.Hijack.CACert != "" || c.Hijack.CAKey != "" {
		switch {
		case c.Hijack.CACert == "" || c.Hijack.CAKey == "":
			bad("hijack: caCert and caKey are both required to intercept hosts")
		default:
			if _, err := loadCA(c.Hijack.CACert, c.Hijack.CAKey); err != nil {
				bad("hijack: %v", err)
			}
		}
	}
	if c.Hijack.LeafValidity < time.Minute || c.Hijack.LeafValidity > 90*24*time.Hour {
		bad("hijack.leafValidity %v: must be between 1m and 2160h", c.Hijack.LeafValidity)
	}
	if c.Hijack.CertCacheSize < 1 {
		bad("hijack.certCacheSize %d: must be at least 1", c.Hijack.CertCacheSize)
	}
	if err := c.Outbound.Validate("outbound"); err != nil {
		bad("%v", err)
	}
	if len(c.ConnectPorts) == 0 {
		bad("connectPorts: at least one port is required")
	}
	for _, p := range c.ConnectPorts {
		if p < 1 || p > 65535 {
			bad("connectPorts: %d is not a port", p)
		}
	}
	if c.MaxHeaderBytes < 1024 {
		bad("maxHeaderBytes %s: must be at least 1KiB", c.MaxHeaderBytes)
	}
	for _, d := range []struct {
		key string
		v   time.Duration
	}{
		{"dialTimeout", c.DialTimeout},
		{"responseHeaderTimeout", c.ResponseHeaderTimeout},
		{"tunnelIdleTimeout", c.TunnelIdleTimeout},
		{"tlsHandshakeTimeout", c.TLSHandshakeTimeout},
		{"readHeaderTimeout", c.ReadHeaderTimeout},
	} {
		if d.v <= 0 {
			bad("%s %v: must be positive", d.key, d.v)
		}
	}
	return errors.Join(errs...)
}

// validate checks the regex and the form of the redirect.
func (r Rule) validate() error {
	if r.Regex == "" {
		return errors.New("regex is required")
	}
	if _, err := regexp.Compile(r.Regex); err != nil {
		return fmt.Errorf("regex %q: %w", r.Regex, err)
	}
	if r.Redirect == "" {
		return nil
	}
	if strings.Contains(r.Redirect, "://") {
		if !strings.HasPrefix(r.Redirect, "http://") && !strings.HasPrefix(r.Redirect, "https://") {
			return fmt.Errorf("redirect %q: a template must start with http:// or https://", r.Redirect)
		}
		return nil
	}
	if !validHostPort(r.Redirect) {
		return fmt.Errorf("redirect %q: must be host[:port] or an http(s) URL template", r.Redirect)
	}
	return nil
}

// validHostPort reports whether s is a bare host or host:port.
func validHostPort(s string) bool {
	if s == "" || strings.ContainsAny(s, "/?#@ \t\\") {
		return false
	}
	u, err := url.Parse("//" + s)
	if err != nil || u.Host != s || u.Hostname() == "" {
		return false
	}
	if p := u.Port(); p != "" {
		n, err := parsePort(p)
		return err == nil && n > 0
	}
	return !strings.HasSuffix(s, ":")
}
