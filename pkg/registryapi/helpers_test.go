package registryapi

import (
	"net/http"
	"net/url"

	"github.com/damselfly/damselfly/pkg/manifestcache"
)

// newFront is the front as the registry-cache builds it: one upstream,
// blobs passed through, every upstream request through hc (nil: the
// default client).
func newFront(c *manifestcache.Cache, upstream *url.URL, hc *http.Client) (*Front, error) {
	ups, err := NewFixed(upstream)
	if err != nil {
		return nil, err
	}
	return New(c, ups, NewPassThrough(hc, nil), WithHTTPClient(hc))
}
