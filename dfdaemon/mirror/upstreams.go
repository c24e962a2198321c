package mirror

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/damselfly/damselfly/pkg/registryapi"
)

// upstreams picks the registry of a request from the configuration (see
// the package doc): ?ns= among the allowed ones, else Config.Registry.
type upstreams struct {
	def      *url.URL
	listed   map[string]*url.URL
	allowAny bool
}

var _ registryapi.Upstreams = (*upstreams)(nil)

// newUpstreams returns the upstreams of cfg (defaults applied, valid).
func newUpstreams(cfg Config) *upstreams {
	def, _ := parseBase(cfg.Registry) // validated
	u := &upstreams{def: def, listed: map[string]*url.URL{}, allowAny: cfg.AllowAnyUpstream}
	for _, up := range cfg.Upstreams {
		h, _ := canonicalHost(up.Host) // validated
		scheme := "https"
		if up.Insecure {
			scheme = "http"
		}
		u.listed[h] = &url.URL{Scheme: scheme, Host: h}
	}
	return u
}

// Upstream returns the registry r is for and the repository name there:
// on Docker Hub a one-component name gets "library/".
func (u *upstreams) Upstream(r *http.Request, name string) (*url.URL, string, error) {
	base, err := u.pick(r)
	if err != nil {
		return nil, "", err
	}
	if name != "" && base.Host == dockerHubHost && !strings.Contains(name, "/") {
		name = "library/" + name
	}
	return base, name, nil
}

func (u *upstreams) pick(r *http.Request) (*url.URL, error) {
	ns := queryValue(r.URL.RawQuery, "ns")
	if ns == "" {
		return u.def, nil
	}
	h, err := canonicalHost(ns)
	if err != nil {
		return nil, fmt.Errorf("ns %q: %w", ns, registryapi.ErrNotAllowed)
	}
	if h == u.def.Host {
		return u.def, nil
	}
	if base, ok := u.listed[h]; ok {
		return base, nil
	}
	if u.allowAny {
		return &url.URL{Scheme: "https", Host: h}, nil
	}
	return nil, fmt.Errorf("ns %q: %w (add it to mirror.upstreams)", ns, registryapi.ErrNotAllowed)
}

// queryValue is url.ParseQuery(raw).Get(key) without building the map: the
// first value of key, "" when there is none. Pairs that do not unescape
// are skipped, as ParseQuery skips them.
func queryValue(raw, key string) string {
	for raw != "" {
		var pair string
		pair, raw, _ = strings.Cut(raw, "&")
		if strings.Contains(pair, ";") {
			continue // ParseQuery refuses the pair
		}
		k, v, _ := strings.Cut(pair, "=")
		if strings.ContainsAny(k, "%+") {
			var err error
			if k, err = url.QueryUnescape(k); err != nil {
				continue
			}
		}
		if k != key {
			continue
		}
		if v, err := url.QueryUnescape(v); err == nil {
			return v
		}
	}
	return ""
}
