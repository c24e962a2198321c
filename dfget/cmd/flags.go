package cmd

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/textproto"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"

	"github.com/damselfly/damselfly/pkg/btlink"
	"github.com/damselfly/damselfly/pkg/clusterauth"
	"github.com/damselfly/damselfly/pkg/httpx"
	"github.com/damselfly/damselfly/pkg/log"
	"github.com/damselfly/damselfly/pkg/netpolicy"
	"github.com/damselfly/damselfly/pkg/ratelimit"
	"github.com/damselfly/damselfly/pkg/redact"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// ErrUsage marks errors in the command line.
var ErrUsage = errors.New("usage")

// usageError is a command-line mistake; it prints as its message alone.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg + " (see dfget --help)" }
func (e *usageError) Is(target error) bool {
	return target == ErrUsage
}

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// flags holds the parsed command line.
type flags struct {
	url          string
	btFile       string // --bt-file: the file of a torrent
	output       string
	supernodes   []string
	digest       digest.Digest
	rng          string // --range, as a Range header value ("bytes=a-b")
	header       http.Header
	filter       []string
	identifier   string
	localLimit   int64 // bytes per second, 0 for none
	totalLimit   int64
	notbs        bool
	timeout      time.Duration
	pieceTimeout time.Duration
	stallTimeout time.Duration
	pieceMinRate int64 // bytes per second, 0 for the default
	peerListen   string
	advertiseIP  string
	dataDir      string
	tokenFile    string
	sourcePolicy netpolicy.Config
	peerPolicy   netpolicy.Config
	log          log.Config
	quiet        bool
	version      bool
	help         bool
}

// headerFlag collects repeated --header 'K: V'.
type headerFlag struct{ h http.Header }

func (f *headerFlag) String() string { return "" }

func (f *headerFlag) Set(v string) error {
	k, val, ok := strings.Cut(v, ":")
	k = strings.TrimSpace(k)
	if !ok || k == "" || !validToken(k) {
		return fmt.Errorf("want 'Name: value'")
	}
	val = strings.TrimSpace(val)
	if strings.ContainsAny(val, "\r\n") {
		return fmt.Errorf("header value has a line break")
	}
	f.h.Add(textproto.CanonicalMIMEHeaderKey(k), val)
	return nil
}

func validToken(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte("()<>@,;:\\\"/[]?={}", c) >= 0 {
			return false
		}
	}
	return true
}

const usageText = `Usage: dfget -u URL -o FILE [flags]

Download URL to FILE through the Damselfly P2P network. While it runs, dfget
serves the pieces it has to other peers. When the supernode or every peer
fails it downloads from the source instead, unless --notbs is given. FILE is
written atomically and only once its content is verified. With --range FILE
holds only the bytes asked for, written once each is verified.

URL may name a BitTorrent source: a magnet link ('magnet:?xt=urn:btih:...',
quoted for the shell) or a torrent file's URL ('torrent+https://host/x.torrent').
The supernode fetches it as a BitTorrent client and dfget gets it from the
supernode and its peers; dfget has no BitTorrent client, so a torrent is
never downloaded from its source (--notbs is implied). --bt-file picks one
file of a torrent of several.

Flags:
`

func newFlagSet(o *flags) *flag.FlagSet {
	fs := flag.NewFlagSet("dfget", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.url, "u", "", "`URL` to download (required): http(s), a magnet link or torrent+http(s)://…/x.torrent")
	fs.StringVar(&o.url, "url", "", "same as -u")
	fs.StringVar(&o.btFile, "bt-file", "", "with a torrent URL (magnet: or torrent+http(s)://): the file `PATH` to download, as the torrent lists it (dir/name); needed when the torrent has several files, which the error without it lists. A torrent is only ever downloaded through the supernode: dfget has no BitTorrent client, so it never goes to the source (--notbs is implied)")
	fs.StringVar(&o.output, "o", "", "output `FILE` (required)")
	fs.StringVar(&o.output, "output", "", "same as -o")
	fs.Func("node", "supernodes, `host:port[,host:port]` (default 127.0.0.1:8002)", func(v string) error {
		o.supernodes = nil
		for n := range strings.SplitSeq(v, ",") {
			n = strings.TrimSpace(n)
			if n == "" {
				continue
			}
			if _, _, err := net.SplitHostPort(n); err != nil {
				return fmt.Errorf("%q: want host:port", n)
			}
			o.supernodes = append(o.supernodes, n)
		}
		if len(o.supernodes) == 0 {
			return errors.New("no supernode")
		}
		return nil
	})
	fs.Func("digest", "expected `sha256:hex` of the content", func(v string) error {
		d := digest.Digest(strings.TrimSpace(v))
		if _, err := taskid.ForDigest(d); err != nil {
			return fmt.Errorf("want sha256:<64 hex>")
		}
		o.digest = d
		return nil
	})
	fs.Func("range", "write only the bytes `R` of the content to FILE: a-b (both included), a- (from a to the end) or -n (the last n), with or without a bytes= prefix; one range. The pieces holding them are fetched first and dfget ends once they are verified, each against its piece's digest, without waiting for the rest (a range covering the whole content waits for the whole content's digest)", func(v string) error {
		v = strings.TrimSpace(v)
		if !strings.Contains(v, "=") {
			v = "bytes=" + v
		}
		// Against the largest size: only a malformed or empty range fails.
		if _, err := httpx.ParseRange(v, math.MaxInt64); err != nil {
			return fmt.Errorf("want a-b, a- or -n (n > 0)")
		}
		o.rng = v
		return nil
	})
	fs.Var(&headerFlag{h: o.header}, "header", "`'Name: value'` header for the source (repeatable)")
	fs.Func("filter", "query keys of URL that do not identify the content, `k1&k2`", func(v string) error {
		o.filter = taskid.ParseFilter(v)
		return nil
	})
	fs.StringVar(&o.identifier, "identifier", "", "`S` separates downloads of one URL with different content")
	fs.Func("locallimit", "download `RATE` of this dfget, e.g. 20M (K, M, G; optional B or iB)", func(v string) error {
		r, err := ratelimit.Parse(v)
		o.localLimit = r
		return err
	})
	fs.Func("totallimit", "`RATE` cap on everything this dfget sends and receives", func(v string) error {
		r, err := ratelimit.Parse(v)
		o.totalLimit = r
		return err
	})
	fs.BoolVar(&o.notbs, "notbs", false, "never download from the source (always so for a torrent URL)")
	fs.DurationVar(&o.timeout, "timeout", 0, "give up after `D` (0: no limit)")
	fs.DurationVar(&o.pieceTimeout, "piece-timeout", 0, "advanced: bound on one piece fetch from a peer, `D` (0: 60s); a peer slower than this is reported")
	fs.Func("piece-min-rate", "advanced: slowest `RATE` a piece may arrive at from a peer before it is fetched elsewhere (default 1M); lower it on slow links", func(v string) error {
		r, err := ratelimit.Parse(v)
		if err == nil && r <= 0 {
			err = errors.New("must be positive")
		}
		o.pieceMinRate = r
		return err
	})
	fs.DurationVar(&o.stallTimeout, "stall-timeout", 0, "advanced: P2P has failed when no piece is verified for `D` (0: 60s); then dfget goes to the source, or fails with --notbs")
	fs.StringVar(&o.peerListen, "peer-listen", ":0", "`ADDR` of the upload server serving pieces to other peers")
	fs.StringVar(&o.advertiseIP, "advertise-ip", "", "`IP` other peers reach this one at (default: the local address towards the first supernode)")
	fs.StringVar(&o.tokenFile, "cluster-token-file", "", "`FILE` holding the supernode's cluster token (default: $"+clusterauth.EnvToken+")")
	fs.StringVar(&o.dataDir, "data-dir", "", "`DIR` for pieces in progress (default: a hidden directory beside FILE, removed at exit)")
	fs.StringVar(&o.log.Level, "log-level", "error", "log `LEVEL`: debug, info, warn, error")
	fs.StringVar(&o.log.Format, "log-format", "console", "log `FORMAT`: console or json")
	fs.BoolVar(&o.quiet, "quiet", false, "no progress bar, no notices")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	policyFlags(fs, o)
	return fs
}

// parseArgs parses and checks the command line.
func parseArgs(args []string) (*flags, *flag.FlagSet, error) {
	o := &flags{header: http.Header{}, supernodes: []string{"127.0.0.1:8002"}}
	fs := newFlagSet(o)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			o.help = true
			return o, fs, nil
		}
		return nil, fs, usagef("%s", err.Error())
	}
	if fs.NArg() > 0 {
		return nil, fs, usagef("unexpected argument %q", fs.Arg(0))
	}
	if o.version {
		return o, fs, nil
	}
	if o.url == "" {
		return nil, fs, usagef("-u URL is required")
	}
	if btlink.IsLink(o.url) {
		if _, err := btlink.Parse(o.url); err != nil {
			return nil, fs, usagef("-u: %s", redact.Error(err))
		}
		if len(o.filter) > 0 {
			return nil, fs, usagef("--filter is for http(s) URLs: a torrent is named by its info-hash or its torrent file's URL")
		}
	} else {
		if _, err := taskid.Normalize(o.url, nil); err != nil {
			return nil, fs, usagef("-u: %v", err)
		}
		if o.btFile != "" {
			return nil, fs, usagef("--bt-file is for a torrent URL (-u 'magnet:?xt=urn:btih:...' or torrent+https://.../x.torrent)")
		}
	}
	if err := schedapi.ValidateFile(o.url, o.btFile); err != nil {
		return nil, fs, usagef("--bt-file: %v", err)
	}
	if o.output == "" {
		return nil, fs, usagef("-o FILE is required")
	}
	if o.timeout < 0 {
		return nil, fs, usagef("--timeout must not be negative")
	}
	if o.pieceTimeout < 0 {
		return nil, fs, usagef("--piece-timeout must not be negative")
	}
	if o.stallTimeout < 0 {
		return nil, fs, usagef("--stall-timeout must not be negative")
	}
	if o.advertiseIP != "" && net.ParseIP(o.advertiseIP) == nil {
		return nil, fs, usagef("--advertise-ip %q: not an IP address", o.advertiseIP)
	}
	if _, _, err := net.SplitHostPort(o.peerListen); err != nil {
		return nil, fs, usagef("--peer-listen %q: want [host]:port", o.peerListen)
	}
	if err := o.log.Validate(); err != nil {
		return nil, fs, usagef("%v", err)
	}
	return o, fs, nil
}

func printUsage(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprint(w, usageText)
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

// torrent reports whether -u names a BitTorrent source, which only the
// supernode can fetch.
func (o *flags) torrent() bool { return btlink.IsLink(o.url) }
