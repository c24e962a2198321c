package main

import (
	"context"
	"errors"
	"fmt"
	"image"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/damselfly/damselfly/pkg/ratelimit"
)

// The swarm suite's modes.
const (
	modeDirect      = "direct"
	modePullThrough = "pull-through"
	modeDamselfly   = "damselfly"
)

func allModes() []string { return []string{modeDirect, modePullThrough, modeDamselfly} }

// Targets at the largest N (issue 5).
const (
	targetEgress = 1.02 // origin egress / image size, damselfly
	targetP99    = 1.25 // p99 completion / ideal, damselfly
)

// scenario is one mode at one N.
type scenario struct {
	mode string
	n    int
	// origin counters during the pulls
	origin originStats
	// completion time of each client in seconds since the common start,
	// sorted
	times []float64
	pulls []pullResult
	// CPU seconds used during the pulls, and peak RSS in bytes
	originCPU, benchCPU              float64
	supernodeCPU                     float64
	supernodeRSS                     int64
	dfdCPUSum, dfdCPUMax             float64
	dfdRSSMax, dfdRSSSum             int64
	cacheCPU                         float64
	cacheRSS                         int64
	fromCDN, fromPeers, fromSource   float64 // dfdaemons' received bytes by origin
	pieceFailures, sourceFallbacks   float64
	assignmentsCDN, assignmentsPeers float64
	startDaemons                     time.Duration
}

// runSwarm is the swarm suite: for each N of -n, each mode of -modes, one
// scenario, then the table, the targets, and the optional Markdown and
// chart.
func runSwarm(ctx context.Context, o options, work string) error {
	if len(o.ns) == 0 || len(o.layersMiB) == 0 || o.rate <= 0 || o.originRate <= 0 {
		return errors.New("-n, -layers, -rate and -origin-rate must be positive")
	}
	for _, m := range o.modes {
		if !slices.Contains(allModes(), m) {
			return fmt.Errorf("-modes: unknown mode %q (want %s)", m, strings.Join(allModes(), ", "))
		}
	}
	var rn *runNet
	switch o.net {
	case netLoopback:
	case netNetns:
		// SIGINT and SIGTERM end the run through ctx, so that the
		// deferred teardowns remove every namespace.
		var stop context.CancelFunc
		ctx, stop = netnsSignals(ctx)
		defer stop()
		var err error
		if rn, err = setupRunNet(ctx, int64(o.originRate)); err != nil {
			return err
		}
		defer rn.close()
	default:
		return fmt.Errorf("-net %q: want %s or %s", o.net, netLoopback, netNetns)
	}
	fmt.Printf("pushing the image (layers %s MiB) to the origin...\n", joinInts(o.layersMiB))
	org, err := startOrigin(ctx, o, work, rn)
	if err != nil {
		return fmt.Errorf("origin: %w", err)
	}
	defer org.stop()
	size := org.info.Size()
	ideal := float64(size) / float64(o.rate)
	cdnRate := "unlimited"
	if o.cdnRate > 0 {
		cdnRate = o.cdnRate.String() + "/s"
	}
	fmt.Printf("network: %s: %s\n", o.net, netDescription(o.net))
	fmt.Printf("image %s:%s: %d blobs, %.1f MiB; per-node download %s/s, dfdaemon upload %s/s, origin egress %s/s, supernode CDN upload %s; ideal %.2fs\n\n",
		org.info.Repo, org.info.Tag, len(org.info.Blobs), float64(size)/mib, o.rate, o.uploadRate, o.originRate, cdnRate, ideal)

	var results []scenario
	for _, n := range o.ns {
		for _, mode := range o.modes {
			sc, err := runScenario(ctx, o, org, filepath.Join(work, fmt.Sprintf("%s-%d", mode, n)), mode, n)
			if err != nil {
				return fmt.Errorf("%s, N=%d: %w", mode, n, err)
			}
			results = append(results, sc)
			fmt.Printf("%-12s N=%-3d origin egress %6.3fx  p50 %6.2fs  p99 %6.2fs  max %6.2fs  (%.2fx ideal at p99)\n",
				mode, n, float64(sc.origin.Egress)/float64(size), pct(sc.times, 50), pct(sc.times, 99), pct(sc.times, 100), pct(sc.times, 99)/ideal)
			if mode == modeDamselfly {
				fmt.Printf("             supernode: %.0f piece assignments from the CDN, %.0f from peers; dfdaemons: %.0f failed piece fetches, %.0f source fallbacks; %s to start the daemons\n",
					sc.assignmentsCDN, sc.assignmentsPeers, sc.pieceFailures, sc.sourceFallbacks, sc.startDaemons.Round(time.Millisecond))
			}
			if o.timeline {
				printTimeline(sc)
			}
		}
	}

	rep := report{net: o.net, results: results, size: size, ideal: ideal, rate: o.rate, originRate: o.originRate, uploadRate: o.uploadRate, layers: o.layersMiB, blobs: len(org.info.Blobs)}
	if oc, err := org.cpuTime(); err == nil {
		rep.originCPUTotal = oc.Seconds()
	}
	if r, err := org.peakRSS(); err == nil {
		rep.originRSS = r
	}
	fmt.Println()
	rep.writeText(os.Stdout)
	if o.markdown != "" {
		if err := os.WriteFile(o.markdown, []byte(rep.markdown()), 0o644); err != nil {
			return err
		}
		fmt.Println("\nwrote", o.markdown)
	}
	if o.chart != "" {
		if err := writeChartFile(o.chart, rep.chart()); err != nil {
			return err
		}
		fmt.Println("wrote", o.chart)
	}
	return nil
}

// runScenario pulls the image on n clients at once in one mode.
func runScenario(ctx context.Context, o options, org *origin, dir, mode string, n int) (sc scenario, err error) {
	sc = scenario{mode: mode, n: n}
	defer os.RemoveAll(dir)
	bases := make([]string, n)
	lims := make([]*rate.Limiter, n)
	var cache, sn *proc
	var snAddr string
	var dfds []*proc
	var dfdAddrs []string
	snHC, dfdHC := http.DefaultClient, make([]*http.Client, n)
	for i := range dfdHC {
		dfdHC[i] = http.DefaultClient
	}
	// -net netns: the scenario's namespaces (the service host for the
	// supernode or the cache, one per node), removed after the children
	// stopped (deferred first, so run last).
	var svc nsHost
	var nodes []nsHost
	if org.net != nil {
		var svcUp int64
		if mode == modeDamselfly && o.cdnRate > 0 {
			svcUp = int64(o.cdnRate)
		}
		if svc, nodes, err = org.net.plan.scenarioHosts(n, int64(o.uploadRate), int64(o.rate), svcUp); err != nil {
			return sc, err
		}
		hosts := append([]nsHost{svc}, nodes...)
		defer func() {
			if rerr := org.net.removeHosts(hosts...); rerr != nil && err == nil {
				err = rerr
			}
		}()
		if err := org.net.addHosts(ctx, hosts...); err != nil {
			return sc, err
		}
		snHC = nsHTTPClient(svc.ns)
		for i, h := range nodes {
			dfdHC[i] = nsHTTPClient(h.ns)
		}
	}
	defer func() {
		// Stop the children at once: each takes a moment to shut down.
		var g errgroup.Group
		for _, p := range append(dfds, sn, cache) {
			if p != nil {
				g.Go(func() error { p.stop(); return nil })
			}
		}
		_ = g.Wait()
	}()

	t0 := time.Now()
	switch {
	case org.net != nil:
		if err := startNetnsMode(ctx, o, org, dir, mode, svc, nodes, bases, &cache, &sn, &snAddr, &dfds, &dfdAddrs); err != nil {
			return sc, err
		}
	case mode == modeDirect:
		for i := range n {
			bases[i], lims[i] = org.info.URL, newByteLimiter(int64(o.rate))
		}
	case mode == modePullThrough:
		p, rl, err := startChild(ctx, "pull-through cache", "-serve", "pullthrough", "-upstream", org.info.URL, "-serve-dir", dir)
		if err != nil {
			return sc, err
		}
		cache = p
		if err := waitHealthy(ctx, rl.URL+"/v2/"); err != nil {
			return sc, err
		}
		for i := range n {
			bases[i], lims[i] = rl.URL, newByteLimiter(int64(o.rate))
		}
	case mode == modeDamselfly:
		var addrs []string
		sn, addrs, err = startOnFreePorts(ctx, o, "supernode", 1, func(a []string) (string, []string) {
			args := []string{"--listen", a[0], "--data-dir", filepath.Join(dir, "supernode"),
				"--admin-token", "bench", "--log-level", "warn", "--source-allow", "127.0.0.1/32"}
			if o.cdnRate > 0 {
				args = append(args, "--upload-rate", o.cdnRate.String())
			}
			if o.snConfig != "" {
				args = append(args, "--config", o.snConfig)
			}
			return "http://" + a[0] + "/healthz", args
		})
		if err != nil {
			return sc, err
		}
		snAddr = addrs[0]
		var g errgroup.Group
		dfds = make([]*proc, n)
		dfdAddrs = make([]string, n)
		for i := range n {
			g.Go(func() error {
				p, addrs, err := startOnFreePorts(ctx, o, "dfdaemon", 2, func(a []string) (string, []string) {
					args := []string{"--listen", a[0], "--peer-listen", a[1], "--advertise-ip", "127.0.0.1",
						"--node", snAddr, "--registry", org.info.URL, "--data-dir", filepath.Join(dir, fmt.Sprintf("dfdaemon-%d", i)),
						"--log-level", "warn", "--source-allow", "127.0.0.1/32", "--peer-allow", "127.0.0.1/32",
						"--download-rate", o.rate.String(), "--upload-rate", o.uploadRate.String()}
					if o.dfdConfig != "" {
						args = append(args, "--config", o.dfdConfig)
					}
					return "http://" + a[0] + "/healthz", args
				})
				if err != nil {
					return err
				}
				dfds[i], dfdAddrs[i] = p, "http://"+addrs[0]
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return sc, err
		}
		copy(bases, dfdAddrs)
	default:
		return sc, fmt.Errorf("unknown mode %q", mode)
	}
	sc.startDaemons = time.Since(t0)

	if err := org.reset(ctx); err != nil {
		return sc, err
	}
	procs := append([]*proc{org.proc, sn, cache}, dfds...)
	cpu0, err := cpuSeconds(procs)
	if err != nil {
		return sc, err
	}
	bench0 := benchCPUSeconds()

	start := time.Now()
	sc.pulls = make([]pullResult, n)
	g, gctx := errgroup.WithContext(ctx)
	if org.net != nil {
		// Each node's runtime is a child in the node's namespace.
		g.Go(func() error {
			var err error
			sc.pulls, sc.benchCPU, err = pullInNamespaces(gctx, nodes, bases, o.parallel, o.swarmBudget)
			return err
		})
	}
	for i := range n {
		if org.net != nil {
			break
		}
		g.Go(func() error {
			r, err := pullImage(gctx, bases[i], org.info.Repo, org.info.Tag, lims[i], o.parallel, start)
			if err != nil {
				return fmt.Errorf("client %d: %w", i, err)
			}
			sc.pulls[i] = r
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		for _, p := range append([]*proc{sn, cache}, dfds...) {
			if p != nil {
				if s := p.stderr.String(); s != "" {
					err = fmt.Errorf("%w\n%s: %.2000s", err, p.name, s)
				}
			}
		}
		return sc, err
	}
	if org.net == nil {
		sc.benchCPU = benchCPUSeconds() - bench0
	}
	cpu1, err := cpuSeconds(procs)
	if err != nil {
		return sc, err
	}
	for _, r := range sc.pulls {
		sc.times = append(sc.times, r.done.Seconds())
	}
	slices.Sort(sc.times)
	if sc.origin, err = org.stats(ctx); err != nil {
		return sc, err
	}
	sc.originCPU = cpu1[0] - cpu0[0]
	if sn != nil {
		sc.supernodeCPU = cpu1[1] - cpu0[1]
		if sc.supernodeRSS, err = sn.peakRSS(); err != nil {
			return sc, err
		}
		m, err := scrape(ctx, snHC, "http://"+snAddr+"/metrics")
		if err != nil {
			return sc, err
		}
		sc.assignmentsCDN = m.Sum("damselfly_scheduler_assignments_total", `source="cdn"`)
		sc.assignmentsPeers = m.Sum("damselfly_scheduler_assignments_total", `source="peer"`)
	}
	if cache != nil {
		sc.cacheCPU = cpu1[2] - cpu0[2]
		if sc.cacheRSS, err = cache.peakRSS(); err != nil {
			return sc, err
		}
	}
	for i, p := range dfds {
		c := cpu1[3+i] - cpu0[3+i]
		sc.dfdCPUSum += c
		sc.dfdCPUMax = max(sc.dfdCPUMax, c)
		r, err := p.peakRSS()
		if err != nil {
			return sc, err
		}
		sc.dfdRSSSum += r
		sc.dfdRSSMax = max(sc.dfdRSSMax, r)
		m, err := scrape(ctx, dfdHC[i], dfdAddrs[i]+"/metrics")
		if err != nil {
			return sc, err
		}
		sc.fromCDN += m.Sum("damselfly_peer_received_bytes_total", `from="cdn"`)
		sc.fromPeers += m.Sum("damselfly_peer_received_bytes_total", `from="peer"`)
		sc.fromSource += m.Sum("damselfly_peer_received_bytes_total", `from="source"`)
		sc.pieceFailures += m.Sum("damselfly_peer_piece_failures_total", "")
		sc.sourceFallbacks += m.Sum("damselfly_peer_source_fallbacks_total", "")
	}
	return sc, nil
}

// cpuSeconds returns the CPU seconds each process has used; 0 for nil.
func cpuSeconds(ps []*proc) ([]float64, error) {
	out := make([]float64, len(ps))
	for i, p := range ps {
		if p == nil {
			continue
		}
		d, err := p.cpuTime()
		if err != nil {
			return nil, err
		}
		out[i] = d.Seconds()
	}
	return out, nil
}

// benchCPUSeconds is the CPU time of this process: the clients.
func benchCPUSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func printTimeline(sc scenario) {
	for i, p := range sc.pulls {
		var b strings.Builder
		for _, bt := range p.blobs {
			fmt.Fprintf(&b, " %s %.1fMiB %.2f-%.2fs;", bt.digest.Encoded()[:8], float64(bt.size)/mib, bt.start.Seconds(), bt.end.Seconds())
		}
		fmt.Printf("    client %2d done %.2fs:%s\n", i, p.done.Seconds(), b.String())
	}
}

func joinInts(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}

// report renders the results.
type report struct {
	net              string
	results          []scenario
	size             int64
	ideal            float64
	rate, originRate ratelimit.Rate
	uploadRate       ratelimit.Rate
	layers           []int
	blobs            int
	originCPUTotal   float64
	originRSS        int64
}

func (r report) writeText(w *os.File) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\tN\torigin egress/size\tp50\tp99\tmax\tp50/ideal\tp99/ideal\tmax/ideal\t")
	for _, s := range r.results {
		fmt.Fprintf(tw, "%s\t%d\t%.3f\t%.2fs\t%.2fs\t%.2fs\t%.2f\t%.2f\t%.2f\t\n", s.mode, s.n, float64(s.origin.Egress)/float64(r.size),
			pct(s.times, 50), pct(s.times, 99), pct(s.times, 100), pct(s.times, 50)/r.ideal, pct(s.times, 99)/r.ideal, pct(s.times, 100)/r.ideal)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\tN\torigin CPU\tsupernode CPU\tsupernode RSS\tdfdaemons CPU (sum)\t(max)\tdfdaemon RSS (max)\t(sum)\tcache CPU\tcache RSS\tclients CPU\tfrom CDN/size\tfrom peers/size\tdownload use\tpeer upload use\t")
	for _, s := range r.results {
		d := s.mode == modeDamselfly
		fmt.Fprintf(tw, "%s\t%d\t%.1f s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.1f s\t%s\t%s\t%s\t%s\t\n", s.mode, s.n, s.originCPU,
			secs(s.supernodeCPU, d), mibs(s.supernodeRSS),
			secs(s.dfdCPUSum, d), secs(s.dfdCPUMax, d), mibs(s.dfdRSSMax), mibs(s.dfdRSSSum),
			secs(s.cacheCPU, s.mode == modePullThrough), mibs(s.cacheRSS), s.benchCPU,
			ratio(s.fromCDN, r.size, d), ratio(s.fromPeers, r.size, d), r.use(s.fromCDN+s.fromPeers+s.fromSource, s, r.rate, d), r.use(s.fromPeers, s, r.uploadRate, d))
	}
	tw.Flush()
	fmt.Fprintf(w, "\norigin: %.1fs CPU in all, peak RSS %s (most of it from generating and pushing the image at start)\n", r.originCPUTotal, mibs(r.originRSS))
	for _, line := range r.targets() {
		fmt.Fprintln(w, line)
	}
}

// use is the share of the nodes' link capacity (rate each, for as long as
// the last pull took) that bytes used: how busy the links were.
func (r report) use(bytes float64, s scenario, rate ratelimit.Rate, show bool) string {
	t := pct(s.times, 100)
	if !show || rate <= 0 || t <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*bytes/(float64(s.n)*float64(rate)*t))
}

func secs(v float64, show bool) string {
	if !show {
		return "-"
	}
	return fmt.Sprintf("%.1f s", v)
}

// mibps renders a rate in MiB/s.
func mibps(r ratelimit.Rate) string { return trimFloat(float64(r)/mib) + " MiB/s" }

func mibs(b int64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f MiB", float64(b)/mib)
}

func ratio(v float64, size int64, show bool) string {
	if !show {
		return "-"
	}
	return fmt.Sprintf("%.2f", v/float64(size))
}

// targets checks the targets at the largest N that ran.
func (r report) targets() []string {
	var top *scenario
	for i := range r.results {
		s := &r.results[i]
		if s.mode == modeDamselfly && (top == nil || s.n > top.n) {
			top = s
		}
	}
	if top == nil {
		return nil
	}
	eg := float64(top.origin.Egress) / float64(r.size)
	p99 := pct(top.times, 99) / r.ideal
	out := []string{
		fmt.Sprintf("target: damselfly origin egress <= %.2fx image size at N=%d: %.3fx, %s", targetEgress, top.n, eg, metOrMissed(eg <= targetEgress)),
		fmt.Sprintf("target: damselfly p99 <= %.2fx ideal at N=%d: %.2fx, %s", targetP99, top.n, p99, metOrMissed(p99 <= targetP99)),
	}
	for _, s := range r.results {
		if s.n == top.n && s.mode != modeDamselfly {
			out = append(out, fmt.Sprintf("  %s at N=%d: origin egress %.2fx, p99 %.2fx ideal; damselfly p99 is %.1fx faster",
				s.mode, s.n, float64(s.origin.Egress)/float64(r.size), pct(s.times, 99)/r.ideal, pct(s.times, 99)/pct(top.times, 99)))
		}
	}
	if top.n < 16 {
		out = append(out, fmt.Sprintf("  (the targets are set for N=16; the largest N here is %d)", top.n))
	}
	return out
}

func metOrMissed(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// chart is completion time p50 (solid) and p99 (dashed) against N, one
// colour per mode, with the ideal as a reference line.
func (r report) chart() *image.RGBA {
	spec := chartSpec{
		title:  fmt.Sprintf("%.0f MiB image, %s MiB/s per node (%s): completion time vs nodes", float64(r.size)/mib, trimFloat(float64(r.rate)/mib), r.net),
		xLabel: "nodes pulling at once (N)", yLabel: "seconds", logX: true,
		hline: r.ideal, hlineLabel: "ideal " + trimFloat(math.Round(r.ideal*100)/100) + "s",
		w: 1000, h: 600,
	}
	for _, mode := range allModes() {
		var xs, p50, p99 []float64
		for _, s := range r.results {
			if s.mode == mode {
				xs = append(xs, float64(s.n))
				p50 = append(p50, pct(s.times, 50))
				p99 = append(p99, pct(s.times, 99))
			}
		}
		if len(xs) == 0 {
			continue
		}
		spec.series = append(spec.series,
			chartSeries{label: mode + " p50", color: modeColor(mode), xs: xs, ys: p50},
			chartSeries{label: mode + " p99", color: modeColor(mode), dashed: true, xs: xs, ys: p99})
	}
	return drawChart(spec)
}

// markdown renders the results as two Markdown tables.
func (r report) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Network: `%s`: %s.\n\n", r.net, netDescription(r.net))
	fmt.Fprintf(&b, "Image: %d blobs (layers %s MiB, random so incompressible, plus config), %.1f MiB with the manifest; per-node download %s, dfdaemon upload %s; origin egress %s; ideal %.2f s.\n\n",
		r.blobs, joinInts(r.layers), float64(r.size)/mib, mibps(r.rate), mibps(r.uploadRate), mibps(r.originRate), r.ideal)
	b.WriteString("| mode | N | origin egress / size | p50 | p99 | max | p50 / ideal | p99 / ideal | max / ideal |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range r.results {
		fmt.Fprintf(&b, "| %s | %d | %.3f | %.2f s | %.2f s | %.2f s | %.2f | %.2f | %.2f |\n", s.mode, s.n, float64(s.origin.Egress)/float64(r.size),
			pct(s.times, 50), pct(s.times, 99), pct(s.times, 100), pct(s.times, 50)/r.ideal, pct(s.times, 99)/r.ideal, pct(s.times, 100)/r.ideal)
	}
	b.WriteString("\nCPU seconds during the pulls and peak RSS:\n\n")
	b.WriteString("| mode | N | origin CPU | supernode CPU | supernode RSS | dfdaemons CPU (sum) | dfdaemon CPU (max) | dfdaemon RSS (max) | pull-through CPU | pull-through RSS | clients CPU | from CDN / size | from peers / size | download use | peer upload use |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, s := range r.results {
		d, p := s.mode == modeDamselfly, s.mode == modePullThrough
		fmt.Fprintf(&b, "| %s | %d | %.1f s | %s | %s | %s | %s | %s | %s | %s | %.1f s | %s | %s | %s | %s |\n", s.mode, s.n, s.originCPU,
			secs(s.supernodeCPU, d), mibs(s.supernodeRSS), secs(s.dfdCPUSum, d), secs(s.dfdCPUMax, d), mibs(s.dfdRSSMax),
			secs(s.cacheCPU, p), mibs(s.cacheRSS), s.benchCPU, ratio(s.fromCDN, r.size, d), ratio(s.fromPeers, r.size, d),
			r.use(s.fromCDN+s.fromPeers+s.fromSource, s, r.rate, d), r.use(s.fromPeers, s, r.uploadRate, d))
	}
	b.WriteString("\n")
	for _, line := range r.targets() {
		b.WriteString(strings.TrimSpace(line) + "\n")
	}
	return b.String()
}
