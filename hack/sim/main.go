// Command sim runs the scale simulator (supernode/scheduler/simulate): one
// task distributed to thousands of virtual peers by the real scheduler
// policy, with a per-node bandwidth model and a virtual clock. It prints one
// table row per scenario.
//
// Scenarios (-scenario, comma-separated, or "all"):
//
//   - kraken: a 3 GB image to 2,600 peers at 300 MB/s up and down each
//     (Kraken's published mark: p50 10 s, p99 18 s);
//   - 6000x1g: a 1 GB file to 6,000 peers at 10 Gb/s each;
//   - custom: what the flags below say.
//
// The presets use the supernode's own piece size (piece.SizeFor: 4 MiB) and
// 0.25 ms one-way latency (a 0.5 ms round trip, one datacenter). The flags
// -peers, -size, -piece-size, -peer-rate, -cdn-rate, -origin-rate,
// -concurrency, -peer-slots, -cdn-slots, -cdn-fanout and -latency override the chosen
// scenarios. Sizes take B, KB, MB, GB (powers of 1000) or KiB, MiB, GiB;
// rates are sizes per second (MB/s) or bits per second (Gb/s, Mb/s).
//
//	go run ./hack/sim
//	go run ./hack/sim -scenario kraken -peers 100 -latency 1ms
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/damselfly/damselfly/supernode/scheduler"
	"github.com/damselfly/damselfly/supernode/scheduler/simulate"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "sim:", err)
		os.Exit(1)
	}
}

type named struct {
	name string
	sc   simulate.Scenario
}

// presetLatency is the presets' one-way latency.
const presetLatency = 250 * time.Microsecond

func presets() []named {
	return []named{
		{"kraken", simulate.Scenario{
			Size: 3e9, Peers: 2600,
			PeerUpload: 300e6, PeerDownload: 300e6,
			CDNUpload: 1.25e9, OriginRate: 1.25e9, Latency: presetLatency,
		}},
		{"6000x1g", simulate.Scenario{
			Size: 1e9, Peers: 6000,
			PeerUpload: 1.25e9, PeerDownload: 1.25e9,
			CDNUpload: 1.25e9, OriginRate: 1.25e9, Latency: presetLatency,
		}},
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("sim", flag.ContinueOnError)
	which := fs.String("scenario", "all", "scenarios to run: kraken, 6000x1g, custom, or all (kraken and 6000x1g)")
	peers := fs.Int("peers", 0, "number of peers")
	size := fs.String("size", "", "task size, e.g. 3GB")
	pieceSize := fs.String("piece-size", "", "piece size, or auto for piece.SizeFor(size) as the supernode picks (the default)")
	peerRate := fs.String("peer-rate", "", "upload and download rate of every peer, e.g. 300MB/s or 10Gb/s")
	cdnRate := fs.String("cdn-rate", "", "upload rate of the CDN (default 10Gb/s)")
	originRate := fs.String("origin-rate", "", "rate at which the origin feeds the CDN (default 10Gb/s)")
	conc := fs.Int("concurrency", 0, "pieces each peer keeps in flight (default 8)")
	peerSlots := fs.Int("peer-slots", 0, "scheduler peerUploadSlots (default 4)")
	cdnSlots := fs.Int("cdn-slots", 0, "scheduler cdnUploadSlots (default 16)")
	cdnFanout := fs.Int("cdn-fanout", 0, "scheduler cdnPieceFanout (default 16; 1 super-seeds)")
	rates := fs.Bool("rates", false, "tell the scheduler the CDN's upload rate (as cdn.uploadRate does), so the CDN's fanout follows it and the peers' reported download rates")
	latency := fs.Duration("latency", -1, "one-way latency of polls, reports, answers and transfer requests (default 0.25ms for the presets, 0 for custom)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the runs to this file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}

	var runs []named
	for _, w := range strings.Split(*which, ",") {
		switch w {
		case "all":
			runs = append(runs, presets()...)
		case "custom":
			runs = append(runs, named{"custom", simulate.Scenario{
				Size: 1e9, Peers: 100, PeerUpload: 125e6, PeerDownload: 125e6, CDNUpload: 1.25e9, OriginRate: 1.25e9,
			}})
		default:
			found := false
			for _, p := range presets() {
				if p.name == w {
					runs, found = append(runs, p), true
				}
			}
			if !found {
				return fmt.Errorf("unknown scenario %q", w)
			}
		}
	}

	for i := range runs {
		sc := &runs[i].sc
		if *peers > 0 {
			sc.Peers = *peers
		}
		if err := setSize(&sc.Size, *size); err != nil {
			return fmt.Errorf("-size: %w", err)
		}
		if *pieceSize == "auto" {
			sc.PieceSize = 0
		} else if err := setSize(&sc.PieceSize, *pieceSize); err != nil {
			return fmt.Errorf("-piece-size: %w", err)
		}
		if *peerRate != "" {
			r, err := parseRate(*peerRate)
			if err != nil {
				return fmt.Errorf("-peer-rate: %w", err)
			}
			sc.PeerUpload, sc.PeerDownload = r, r
		}
		if err := setRate(&sc.CDNUpload, *cdnRate); err != nil {
			return fmt.Errorf("-cdn-rate: %w", err)
		}
		if err := setRate(&sc.OriginRate, *originRate); err != nil {
			return fmt.Errorf("-origin-rate: %w", err)
		}
		if *latency >= 0 {
			sc.Latency = *latency
		}
		sc.Concurrency = *conc
		sc.Scheduler = scheduler.Config{PeerUploadSlots: *peerSlots, CDNUploadSlots: *cdnSlots, CDNPieceFanout: *cdnFanout}
	}

	if *rates {
		for i := range runs {
			runs[i].sc.Scheduler.CDNUploadRate = int64(runs[i].sc.CDNUpload)
		}
	}

	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tpeers\tsize\tpieces\tpeer rate\tlatency\tideal\tp50\tp90\tp99\tmax\tp50/ideal\tp99/ideal\tmax/ideal\tstart p99\torigin/size\tcdn/size\ttransfers\tsim time\twall\t")
	for _, r := range runs {
		res, err := simulate.Run(r.sc)
		if err != nil {
			return fmt.Errorf("%s: %w", r.name, err)
		}
		s := float64(r.sc.Size)
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d x %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t%.2f\t%.2f\t%s\t%.2f\t%.2f\t%d\t%s\t%s\t\n",
			r.name, res.Peers, human(r.sc.Size), res.Pieces, human(res.PieceSize), human(int64(r.sc.PeerDownload))+"/s",
			r.sc.Latency, secs(res.Ideal), secs(res.P50), secs(res.P90), secs(res.P99), secs(res.Max),
			res.P50.Seconds()/res.Ideal.Seconds(), res.P99.Seconds()/res.Ideal.Seconds(), res.Max.Seconds()/res.Ideal.Seconds(), secs(res.StartP99),
			float64(res.OriginBytes)/s, float64(res.CDNBytes)/s, res.Transfers,
			secs(res.SimTime), res.Wall.Round(10*time.Millisecond))
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }

func human(n int64) string {
	switch {
	case n >= 1e9 && n%1e7 == 0:
		return strconv.FormatFloat(float64(n)/1e9, 'f', -1, 64) + "GB"
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + "MiB"
	case n >= 1e6 && n%1e4 == 0:
		return strconv.FormatFloat(float64(n)/1e6, 'f', -1, 64) + "MB"
	default:
		return strconv.FormatInt(n, 10) + "B"
	}
}

func setSize(dst *int64, s string) error {
	if s == "" {
		return nil
	}
	v, err := parseSize(s)
	if err != nil {
		return err
	}
	*dst = int64(v)
	return nil
}

func setRate(dst *float64, s string) error {
	if s == "" {
		return nil
	}
	v, err := parseRate(s)
	if err != nil {
		return err
	}
	*dst = v
	return nil
}

var units = []struct {
	suffix string
	mult   float64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1},
}

var bitUnits = []struct {
	suffix string
	mult   float64
}{
	{"Kb", 1e3 / 8}, {"Mb", 1e6 / 8}, {"Gb", 1e9 / 8},
}

// parseSize parses a positive size such as 3GB, 512MiB or 1000.
func parseSize(s string) (float64, error) {
	num, mult := s, 1.0
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			num, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("%q: not a positive size", s)
	}
	return v * mult, nil
}

// parseRate parses a rate in bytes per second such as 300MB/s, or bits per
// second such as 10Gb/s.
func parseRate(s string) (float64, error) {
	body, ok := strings.CutSuffix(s, "/s")
	if !ok {
		return 0, errors.New("rate " + strconv.Quote(s) + ": must end in /s")
	}
	for _, u := range bitUnits {
		if num, ok := strings.CutSuffix(body, u.suffix); ok {
			v, err := strconv.ParseFloat(num, 64)
			if err != nil || v <= 0 {
				return 0, fmt.Errorf("rate %q: not positive", s)
			}
			return v * u.mult, nil
		}
	}
	return parseSize(body)
}
