package cmd

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/damselfly/damselfly/pkg/command"
	"github.com/damselfly/damselfly/pkg/log"
	"github.com/damselfly/damselfly/pkg/manifestcache"
	"github.com/damselfly/damselfly/pkg/netpolicy"
	"github.com/damselfly/damselfly/pkg/redact"
)

// Defaults of the top-level keys.
const (
	DefaultListen   = ":5001"
	DefaultUpstream = "https://registry-1.docker.io"
)

// Config is the registry-cache's configuration: a YAML file (--config),
// with command-line flags taking precedence. docs/registry-cache.md holds
// the annotated default.
type Config struct {
	// Listen is the address of the HTTP listener: /v2/, /healthz, /metrics.
	Listen string `yaml:"listen"`
	// Upstream is the base URL of the registry in front of which the cache
	// stands, scheme://host[:port] (a path prefix, if the registry has one,
	// is kept). Clients send their own credentials; the URL holds none.
	Upstream string `yaml:"upstream"`
	// Source says which addresses the upstream may be reached at: every
	// connection the cache makes (manifests, blobs and tag lists passed
	// through, token realms) and every redirect hop is checked against the
	// resolved IP when it is dialled. Loopback, link-local (cloud metadata),
	// unspecified and multicast addresses are denied unless Allow covers
	// them (pkg/netpolicy; docs/SECURITY.md).
	Source netpolicy.Config `yaml:"source"`
	// Cache tunes the manifest cache.
	Cache manifestcache.Config `yaml:"cache"`
	// Log sets the log level and format.
	Log log.Config `yaml:"log"`
}

// ApplyDefaults fills unset fields.
func (c Config) ApplyDefaults() Config {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.Upstream == "" {
		c.Upstream = DefaultUpstream
	}
	c.Cache = c.Cache.ApplyDefaults()
	c.Log = c.Log.ApplyDefaults()
	return c
}

// Validate reports every problem of the config, each naming its key.
func (c Config) Validate() error {
	var errs []error
	if _, port, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("listen %q: must be host:port", c.Listen))
	} else if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		errs = append(errs, fmt.Errorf("listen %q: bad port %q", c.Listen, port))
	}
	if _, err := parseUpstream(c.Upstream); err != nil {
		errs = append(errs, fmt.Errorf("upstream: %w", err))
	}
	if err := c.Source.Validate("source"); err != nil {
		errs = append(errs, err)
	}
	if err := command.Section("cache", c.Cache.Validate()); err != nil {
		errs = append(errs, err)
	}
	if err := c.Log.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// parseUpstream parses and checks the upstream base URL. Errors never
// repeat a password given in it.
func parseUpstream(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, errors.New("not a URL")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("%q: scheme must be http or https", redact.URL(u.String()))
	case u.Host == "":
		return nil, fmt.Errorf("%q: no host", redact.URL(u.String()))
	case u.User != nil:
		return nil, fmt.Errorf("%q: no user info; clients send their own credentials", redact.URL(u.String()))
	case u.RawQuery != "" || u.Fragment != "":
		return nil, fmt.Errorf("%q: no query or fragment", redact.URL(u.String()))
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	return u, nil
}
