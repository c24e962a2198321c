package cmd

import (
	"flag"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/netpolicy"
	"github.com/damselfly/damselfly/pkg/peer"
	"github.com/damselfly/damselfly/pkg/source/httpsource"
)

// sourceHeaderTimeout bounds the wait for a source's response headers.
const sourceHeaderTimeout = 2 * time.Minute

// outboundOptions returns the peer engine's policy-checked clients: piece
// fetches from other peers dial through the peer policy (--peer-allow,
// --peer-deny), the source fallback through the source policy
// (--source-allow, --source-deny). Pieces from the supernodes' CDN are
// fetched without the peer policy: the user named the supernodes. None uses
// proxy variables.
func outboundOptions(o *flags, cfg peer.Config, logger *zap.Logger) ([]peer.Option, error) {
	sp, err := netpolicy.New(o.sourcePolicy, netpolicy.WithHint("--source-allow"))
	if err != nil {
		return nil, usagef("--source-allow/--source-deny: %v", err)
	}
	pp, err := netpolicy.New(o.peerPolicy, netpolicy.WithHint("--peer-allow"))
	if err != nil {
		return nil, usagef("--peer-allow/--peer-deny: %v", err)
	}
	cfg = cfg.ApplyDefaults()
	peerTr := http.DefaultTransport.(*http.Transport).Clone()
	peerTr.MaxIdleConnsPerHost = max(cfg.Concurrency, 2)
	peerTr.ResponseHeaderTimeout = cfg.PieceTimeout
	srcTr := http.DefaultTransport.(*http.Transport).Clone()
	srcTr.ResponseHeaderTimeout = sourceHeaderTimeout
	src := httpsource.New(httpsource.WithHTTPClient(sp.HTTPClient(srcTr)), httpsource.WithLogger(logger.Named("source")))
	// The supernodes' own CDN was chosen by the user (--node): reached
	// like the supernode itself, not through the peer policy.
	cdnTr := peerTr.Clone()
	cdnTr.Proxy = nil
	return []peer.Option{peer.WithHTTPClient(pp.HTTPClient(peerTr)), peer.WithCDNClient(&http.Client{Transport: cdnTr}),
		peer.WithPolicyHint("--peer-allow"), peer.WithSource(src)}, nil
}

// policyFlags registers the outbound policy flags.
func policyFlags(fs *flag.FlagSet, o *flags) {
	fs.Var(netpolicy.ListFlag{List: &o.sourcePolicy.Allow}, "source-allow", "`CIDR|IP|HOST` the source may be fetched from although denied by default, e.g. 127.0.0.1/32 (repeatable, comma-separated)")
	fs.Var(netpolicy.ListFlag{List: &o.sourcePolicy.Deny}, "source-deny", "`CIDR|IP|HOST` the source is never fetched from (repeatable, comma-separated)")
	fs.Var(netpolicy.ListFlag{List: &o.peerPolicy.Allow}, "peer-allow", "`CIDR|IP|HOST` of peers pieces may be fetched from although denied by default (repeatable, comma-separated)")
	fs.Var(netpolicy.ListFlag{List: &o.peerPolicy.Deny}, "peer-deny", "`CIDR|IP|HOST` of peers never fetched from (repeatable, comma-separated)")
}
