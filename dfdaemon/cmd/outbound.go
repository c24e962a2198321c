package cmd

import (
	"net/http"
	"time"

	"github.com/damselfly/damselfly/pkg/netpolicy"
	"github.com/damselfly/damselfly/pkg/peer"
)

// outbound holds the node's policy-checked HTTP clients. Every connection
// is checked against the resolved IP when it is dialled, each redirect hop
// included, and proxy variables are ignored (this node may be the proxy
// they name).
type outbound struct {
	// upstream reaches registries and sources: the mirror's own requests
	// (HEADs, manifests, /v2/, tag lists, token realms) and the peer
	// engine's source fallback. It follows the source policy.
	upstream *http.Client
	// proxy makes the forward proxy's read checks of blobs it sends through
	// P2P: the source policy plus proxy.outbound.
	proxy *http.Client
	// peers fetches pieces from other peers: the peer policy.
	peers *http.Client
	// cdn fetches pieces from the CDN of the supernode that assigned them:
	// the operator named the supernodes (--node), so, like the supernode
	// client, it is not subject to the peer policy.
	cdn *http.Client
}

func newOutbound(cfg Config) (outbound, error) {
	src, err := netpolicy.New(cfg.Source, netpolicy.WithHint("--source-allow or source.allow"))
	if err != nil {
		return outbound{}, err
	}
	prx, err := netpolicy.New(cfg.Source.Merge(cfg.Proxy.Outbound), netpolicy.WithHint("--source-allow, source.allow or proxy.outbound.allow"))
	if err != nil {
		return outbound{}, err
	}
	peers, err := netpolicy.New(cfg.PeerPolicy, netpolicy.WithHint("--peer-allow or peerPolicy.allow"))
	if err != nil {
		return outbound{}, err
	}
	upTr := http.DefaultTransport.(*http.Transport).Clone()
	upTr.ResponseHeaderTimeout = time.Minute
	pc := cfg.Peer.ApplyDefaults()
	peerTr := http.DefaultTransport.(*http.Transport).Clone()
	peerTr.MaxIdleConnsPerHost = max(pc.Concurrency, 2)
	peerTr.ResponseHeaderTimeout = pc.PieceTimeout
	cdnTr := peerTr.Clone()
	cdnTr.Proxy = nil
	return outbound{upstream: src.HTTPClient(upTr), proxy: prx.HTTPClient(upTr), peers: peers.HTTPClient(peerTr),
		cdn: &http.Client{Transport: cdnTr}}, nil
}

// engineOptions route the peer engine's piece fetches and source fallback
// through the policy-checked clients, and CDN pieces through the trusted
// one.
func (o outbound) engineOptions(src peer.Option) []peer.Option {
	return []peer.Option{peer.WithHTTPClient(o.peers), peer.WithCDNClient(o.cdn), peer.WithPolicyHint("--peer-allow"), src}
}
