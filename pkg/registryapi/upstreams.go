package registryapi

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
)

// Fixed is the Upstreams of a front for one registry (the registry-cache):
// every request goes to it, under the name it asks for.
type Fixed struct{ base *url.URL }

var _ Upstreams = Fixed{}

// NewFixed returns the Upstreams of the registry at base, an http(s) URL
// with a host and no user info, query or fragment.
func NewFixed(base *url.URL) (Fixed, error) {
	if base == nil {
		return Fixed{}, errors.New("upstream: none")
	}
	if (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return Fixed{}, fmt.Errorf("upstream %q: must be an http(s) URL with a host", base.Redacted())
	}
	if base.User != nil || base.RawQuery != "" || base.Fragment != "" {
		return Fixed{}, fmt.Errorf("upstream %q: no user info, query or fragment", base.Redacted())
	}
	return Fixed{base: base}, nil
}

// Upstream returns the registry, and name unchanged.
func (f Fixed) Upstream(_ *http.Request, name string) (*url.URL, string, error) {
	return f.base, name, nil
}
