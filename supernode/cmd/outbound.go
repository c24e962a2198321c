package cmd

import (
	"net/http"
	"time"

	"github.com/damselfly/damselfly/pkg/netpolicy"
)

// sourceHTTPClient returns the CDN's HTTP client, shared by source
// fetches, preheat's manifest resolution and token realm requests: the
// source policy is checked against the resolved IP of every connection,
// each redirect hop included; proxies from the environment are not used;
// redirects are bounded (Go drops Authorization on cross-host hops).
func sourceHTTPClient(p netpolicy.Policy) *http.Client {
	base := http.DefaultTransport.(*http.Transport).Clone()
	base.ResponseHeaderTimeout = 2 * time.Minute
	base.MaxIdleConnsPerHost = 16
	return p.HTTPClient(base)
}

// sourcePolicy is the outbound policy of everything the CDN fetches from:
// sources, token realms, and the BitTorrent client's peers, trackers and
// web seeds.
func sourcePolicy(c netpolicy.Config) (netpolicy.Policy, error) {
	return netpolicy.New(c, netpolicy.WithHint("--source-allow or source.allow"))
}
