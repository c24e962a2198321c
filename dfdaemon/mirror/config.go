package mirror

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/distribution/reference"
)

// Defaults of Config.
const (
	DefaultRegistry  = "https://registry-1.docker.io"
	DefaultAuthTTL   = 30 * time.Second
	DefaultAuthGrace = 5 * time.Minute
)

// dockerHubHost is the API host of Docker Hub; "docker.io" and
// "index.docker.io" name it too.
const dockerHubHost = "registry-1.docker.io"

// Config says which registries the mirror serves and how long a client's
// access to a blob, once confirmed by the upstream, is trusted.
type Config struct {
	// Registry is the upstream of requests that name none: docker's
	// registry-mirrors and direct clients (crane pull
	// 127.0.0.1:65001/repo:tag). A base URL, scheme://host[:port].
	Registry string `yaml:"registry"`
	// Upstreams lists further registries containerd may name with
	// ?ns=<host> (hosts.toml mirrors). The Registry is always allowed.
	Upstreams []Upstream `yaml:"upstreams"`
	// AllowAnyUpstream lets ?ns= name any registry (reached over https).
	// Off by default: the mirror would otherwise fetch from wherever its
	// clients point it. Such a registry is not one the config names
	// (Registries): it cannot authorise reads of the shared digest tasks,
	// and its blobs are URL tasks of their own.
	AllowAnyUpstream bool `yaml:"allowAnyUpstream"`
	// AuthTTL is how long a successful HEAD of a blob with a client's
	// credentials lets the same credentials read that blob again without
	// asking the upstream (default 30s).
	AuthTTL time.Duration `yaml:"authTTL"`
	// AuthGrace is how long such a confirmation still counts when the
	// upstream cannot be reached (default 5m; 0 after defaults is not
	// possible, a negative value turns the grace off).
	AuthGrace time.Duration `yaml:"authGrace"`
}

// Upstream is a registry ?ns= may name.
type Upstream struct {
	// Host is host[:port], as containerd sends it in ns ("docker.io",
	// "ghcr.io", "127.0.0.1:5000").
	Host string `yaml:"host"`
	// Insecure reaches the registry over plain http instead of https.
	Insecure bool `yaml:"insecure"`
}

// ApplyDefaults returns c with unset fields set to their defaults.
func (c Config) ApplyDefaults() Config {
	if c.Registry == "" {
		c.Registry = DefaultRegistry
	}
	if c.AuthTTL == 0 {
		c.AuthTTL = DefaultAuthTTL
	}
	if c.AuthGrace == 0 {
		c.AuthGrace = DefaultAuthGrace
	}
	return c
}

// Validate reports every problem, each naming its key.
func (c Config) Validate() error {
	var errs []error
	if _, err := parseBase(c.Registry); err != nil {
		errs = append(errs, fmt.Errorf("mirror.registry: %w", err))
	}
	seen := map[string]bool{}
	for i, u := range c.Upstreams {
		h, err := canonicalHost(u.Host)
		if err != nil {
			errs = append(errs, fmt.Errorf("mirror.upstreams[%d].host: %w", i, err))
			continue
		}
		if seen[h] {
			errs = append(errs, fmt.Errorf("mirror.upstreams[%d].host %q: listed twice", i, u.Host))
		}
		seen[h] = true
	}
	if c.AuthTTL <= 0 {
		errs = append(errs, fmt.Errorf("mirror.authTTL %s: must be positive", c.AuthTTL))
	}
	return errors.Join(errs...)
}

// parseBase parses a registry base URL: http or https, a host, no path,
// query or credentials.
func parseBase(s string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimRight(s, "/"))
	if err != nil {
		return nil, fmt.Errorf("%q: %w", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("%q: want http:// or https://", s)
	}
	if u.Host == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%q: want scheme://host[:port] only", s)
	}
	h, err := canonicalHost(u.Host)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", s, err)
	}
	return &url.URL{Scheme: u.Scheme, Host: h}, nil
}

// canonicalHost validates host[:port] with the distribution grammar and
// names Docker Hub by its API host.
func canonicalHost(h string) (string, error) {
	h = strings.ToLower(strings.TrimSpace(h))
	if h == "" {
		return "", errors.New("empty host")
	}
	if !anchoredDomain.MatchString(h) {
		return "", fmt.Errorf("%q: not a registry host[:port]", h)
	}
	switch h {
	case "docker.io", "index.docker.io":
		return dockerHubHost, nil
	}
	return h, nil
}

// anchoredDomain is the grammar's host[:port], anchored.
var anchoredDomain = regexp.MustCompile(`^(?:` + reference.DomainRegexp.String() + `)$`)
