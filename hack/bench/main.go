// Command bench measures Damselfly on loopback. It has five modes (-mode):
//
//   - swarm (the default) is the suite of swarm.go: in one run it starts a
//     real registry as origin behind an egress throttle, and for each N
//     pulls one image on N nodes at once three ways, side by side: straight
//     from the origin, through one distribution pull-through cache, and
//     through N dfdaemons (each with a download and an upload rate limit)
//     and a supernode. It prints origin egress / image size, completion
//     times against the ideal and the CPU and memory of every component,
//     and can write the table as Markdown (-markdown) and a chart (-chart).
//     With -net netns (root, iproute2) every node, the supernode and the
//     origin get a network namespace of their own on one bridge, and tc
//     shapes the links instead of the in-process limiters (netns.go).
//
//   - stream pulls one large layer through a dfdaemon and straight from the
//     registry, alternating, and prints the throughput of each, their ratio
//     and dfdaemon's peak RSS (stream.go), beside the floor: the same pull
//     through two minimal relays that only do a verified pull's unavoidable
//     work (floor.go).
//
//   - manifests sends GET manifest by tag through a registry-cache from many
//     concurrent clients and prints requests/s, latency percentiles and how
//     many requests reached the upstream (manifests.go).
//
//   - lazy reads byte ranges of cold blobs through a dfdaemon and straight
//     from an origin behind an egress throttle (issue 12): random 1 MiB
//     ranges one after another, then the scenarios (a cold range
//     deep in a blob, parallel ranges covering a blob, a second node's
//     range), with times to the first and last byte, whether the bytes are
//     right, the origin's copies of each blob once the background fill has
//     settled, and the daemons' CPU seconds per GiB (lazy.go).
//
//   - torrent pulls one file seeded by aria2c with a capped upload on N
//     nodes two ways, one round after the other (issue 15): N dfgets on a
//     magnet link through a supernode, whose BitTorrent client fetches it,
//     and N aria2c leechers that trade pieces among themselves. It prints
//     completion times side by side, the seeder's upload in copies of the
//     file and the CPU of every process (torrent.go). It needs aria2c and
//     mktorrent, and installs them with apt-get when missing.
//
//     go run ./hack/bench -n 1,4,16 -layers 96,48,32,16 -rate 8M -chart docs/bench-swarm.png
//     go run ./hack/bench -mode stream -size 1024 -rounds 3
//     go run ./hack/bench -mode manifests -clients 200 -duration 10s
//     go run ./hack/bench -mode lazy -size 1024 -ranges 8 -origin-rate 20M
//     go run ./hack/bench -mode torrent -size 1024 -n 4 -seed-rate 50M
//
// The binaries are taken from ./bin (make build).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/damselfly/damselfly/pkg/ratelimit"
)

const mib = 1 << 20

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type options struct {
	mode   string
	binDir string
	keep   bool

	// swarm
	ns          []int
	layersMiB   []int
	rate        ratelimit.Rate // per node, both directions
	uploadRate  ratelimit.Rate // dfdaemons' upload; -1: the per-node rate
	originRate  ratelimit.Rate // 0: the per-node rate
	cdnRate     ratelimit.Rate // the supernode CDN's upload; 0: unlimited
	modes       []string
	snConfig    string
	dfdConfig   string
	parallel    int
	markdown    string
	chart       string
	timeline    bool
	net         string // swarm: loopback or netns
	serve       string // internal: run as the origin, pull-through or client child
	serveAddr   string // internal: the child's listen host
	upstream    string
	serveDir    string
	relayHashes int // internal: -serve relay's SHA-256 passes
	swarmBudget time.Duration

	// stream, lazy
	sizeMiB int
	rounds  int

	// lazy
	ranges      int
	seed        uint64
	scenarioMiB int
	settle      time.Duration

	// torrent
	seedRate ratelimit.Rate // the aria2c seeder's upload limit

	// manifests
	clients  int
	duration time.Duration
	tags     int
	tagTTL   time.Duration
}

func run() error {
	o := options{ns: []int{1, 4, 16}, layersMiB: []int{96, 48, 32, 16}, rate: 8 << 20, uploadRate: -1, modes: allModes(), seedRate: 50 << 20}
	flag.StringVar(&o.mode, "mode", "swarm", "what to measure: swarm (image pulls on N nodes: direct, pull-through cache, dfdaemon), stream (one pull through dfdaemon vs direct), manifests (manifest GETs through registry-cache) lazy (byte ranges of cold blobs through dfdaemon vs direct) or torrent (a torrent on N nodes: dfgets through a supernode vs aria2c leechers)")
	flag.StringVar(&o.binDir, "bin", "bin", "directory holding the supernode, dfget, dfdaemon and registry-cache binaries")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory")
	flag.Func("n", "swarm: comma-separated node counts to sweep (default 1,4,16); torrent: the nodes, one count (default 4)", func(s string) error {
		v, err := parseInts(s)
		o.ns = v
		return err
	})
	flag.Func("layers", "swarm: comma-separated layer sizes of the image in MiB (default 96,48,32,16)", func(s string) error {
		v, err := parseInts(s)
		o.layersMiB = v
		return err
	})
	flag.Var(&o.rate, "rate", "swarm: per-node bandwidth in bytes/s (K, M, G suffixes): each dfdaemon's download and upload limit, and each direct or pull-through client's download limit (default 8M)")
	flag.Var(&o.uploadRate, "upload-rate", "swarm: the dfdaemons' upload limit, for experiments (default: -rate; 0: unlimited)")
	flag.Var(&o.cdnRate, "cdn-rate", "swarm: the supernode CDN's upload limit (its --upload-rate; default 0: unlimited)")
	flag.Var(&o.originRate, "origin-rate", "swarm: the origin's egress limit, shared by all its connections (default: -rate); lazy: the limit of each of the origin's two links, Damselfly's and the direct reads' (default 20000000, the issue's 20 MB/s; 20M is 20 MiB/s)")
	flag.Func("modes", "swarm: comma-separated modes to run: "+strings.Join(allModes(), ","), func(s string) error {
		o.modes = nil
		for m := range strings.SplitSeq(s, ",") {
			if m = strings.TrimSpace(m); m != "" {
				o.modes = append(o.modes, m)
			}
		}
		return nil
	})
	flag.StringVar(&o.snConfig, "supernode-config", "", "swarm: YAML `file` passed to the supernode's --config, for experiments with its scheduler (see docs/supernode.yaml)")
	flag.StringVar(&o.dfdConfig, "dfdaemon-config", "", "swarm: YAML `file` passed to every dfdaemon's --config, for experiments with the peer engine (see docs/dfdaemon.yaml); the suite's flags override it")
	flag.IntVar(&o.parallel, "parallel", 3, "swarm: blobs each client downloads at once (docker's default max-concurrent-downloads)")
	flag.StringVar(&o.markdown, "markdown", "", "swarm, lazy, torrent: also write the results as Markdown tables to `file`")
	flag.StringVar(&o.chart, "chart", "", "swarm: write a PNG chart of p50 and p99 completion time vs N to `file` (e.g. docs/bench-swarm.png)")
	flag.BoolVar(&o.timeline, "timeline", false, "swarm: print when each client finished each blob")
	flag.DurationVar(&o.swarmBudget, "timeout", 30*time.Minute, "bound on the whole run")
	flag.StringVar(&o.net, "net", netLoopback, "swarm: the nodes' network: loopback (everything on 127.0.0.1, links limited by in-process token buckets) or netns (every node, the supernode and the origin in a network namespace of its own on one bridge, links shaped by tc; needs root and iproute2)")
	flag.StringVar(&o.serve, "serve", "", "internal: run as the suite's origin, pull-through cache, client or relay child process")
	flag.StringVar(&o.serveAddr, "serve-addr", "127.0.0.1", "internal: the child's listen host")
	flag.StringVar(&o.upstream, "upstream", "", "internal: the pull-through cache's upstream URL")
	flag.StringVar(&o.serveDir, "serve-dir", "", "internal: the child's storage directory")
	flag.IntVar(&o.relayHashes, "relay-hashes", 1, "internal: the relay child's SHA-256 passes (2: pieces and the whole content)")
	flag.IntVar(&o.sizeMiB, "size", 1024, "stream: layer size in MiB; lazy: size of the blob the random ranges are read from, in MiB; torrent: size of the torrent's one file in MiB")
	flag.IntVar(&o.rounds, "rounds", 3, "stream: pulls of each kind, alternating (medians are reported)")
	flag.IntVar(&o.ranges, "ranges", 8, "lazy: random 1 MiB ranges read from the -size blob, one after another")
	flag.Uint64Var(&o.seed, "seed", 0, "lazy: seed of the random ranges (default 0: a new seed, printed)")
	flag.IntVar(&o.scenarioMiB, "scenario-size", 256, "lazy: size of each of the scenarios' cold blobs in MiB; scenario (a) reads at 200/256 of it")
	flag.DurationVar(&o.settle, "settle", 3*time.Second, "lazy: a background fill has settled when the origin has sent nothing for this long")
	flag.Var(&o.seedRate, "seed-rate", "torrent: the aria2c seeder's upload limit in bytes/s, K, M, G suffixes binary (default 50M: 50 MiB/s)")
	flag.IntVar(&o.clients, "clients", 200, "manifests: concurrent clients")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "manifests: how long the clients send requests")
	flag.IntVar(&o.tags, "tags", 4, "manifests: tags the clients ask for, round robin")
	flag.DurationVar(&o.tagTTL, "tag-ttl", 0, "manifests: registry-cache cache.tagTTL (default: registry-cache's default, 30s)")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	if o.originRate == 0 {
		o.originRate = o.rate
		if o.mode == "lazy" {
			// The 20 MB/s: "20M" would be 20 MiB/s (pkg/bytesize).
			o.originRate = 20_000_000
		}
	}
	if o.uploadRate < 0 {
		o.uploadRate = o.rate
	}

	ctx, cancel := context.WithTimeout(context.Background(), o.swarmBudget)
	defer cancel()

	switch o.serve {
	case "":
	case "origin":
		return serveOrigin(ctx, o)
	case "pullthrough":
		return servePullThrough(ctx, o)
	case "client":
		return serveClient(ctx, o)
	case "relay":
		return serveRelay(ctx, o)
	default:
		return fmt.Errorf("-serve %q: want origin, pullthrough, client or relay", o.serve)
	}

	work, err := os.MkdirTemp("", "damselfly-bench-")
	if err != nil {
		return err
	}
	if !o.keep {
		defer os.RemoveAll(work)
	} else {
		fmt.Println("work directory:", work)
	}

	switch o.mode {
	case "swarm":
		return runSwarm(ctx, o, work)
	case "stream":
		return runStream(ctx, o, work)
	case "manifests":
		return runManifests(ctx, o, work)
	case "lazy":
		return runLazy(ctx, o, work)
	case "torrent":
		n := 4
		flag.Visit(func(f *flag.Flag) {
			if f.Name == "n" {
				n = 0
			}
		})
		if n == 0 {
			if len(o.ns) != 1 {
				return errors.New("-mode torrent: -n takes one node count")
			}
			n = o.ns[0]
		}
		return runTorrent(ctx, o, work, n)
	default:
		return fmt.Errorf("-mode %q: want swarm, stream, manifests, lazy or torrent", o.mode)
	}
}

// parseInts parses a comma-separated list of positive integers.
func parseInts(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < 1 {
			return nil, fmt.Errorf("%q: want positive integers separated by commas", s)
		}
		out = append(out, v)
	}
	return out, nil
}

// pct returns the p-th percentile (nearest rank) of sorted xs.
func pct(xs []float64, p int) float64 {
	if len(xs) == 0 {
		return 0
	}
	i := (p*len(xs) + 99) / 100
	return xs[max(i-1, 0)]
}

func waitHealthy(ctx context.Context, url string) error {
	return waitHealthyWith(ctx, http.DefaultClient, url)
}

func waitHealthyWith(ctx context.Context, hc *http.Client, url string) error {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not healthy after 30s", url)
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
