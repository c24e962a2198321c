package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/damselfly/damselfly/pkg/registrytest"
)

const streamRepo = "bench/stream"

// runStream pulls one single-layer image's layer through a dfdaemon and
// straight from the registry, alternating, -rounds times each. Every
// dfdaemon pull is cold: each round starts a fresh supernode and dfdaemon
// with empty data dirs, so the bytes go registry -> supernode CDN ->
// dfdaemon -> client. A second pull of the same layer from that dfdaemon
// measures its local cache.
func runStream(ctx context.Context, o options, work string) error {
	if o.sizeMiB < 1 || o.rounds < 1 {
		return errors.New("-size and -rounds must be positive")
	}
	reg, err := registrytest.Start(ctx, registrytest.WithDir(filepath.Join(work, "registry")))
	if err != nil {
		return err
	}
	defer reg.Close()

	fmt.Printf("pushing a %d MiB single-layer image of random bytes to the registry...\n", o.sizeMiB)
	layer, err := pushStreamImage(ctx, reg, int64(o.sizeMiB)*mib)
	if err != nil {
		return err
	}
	size := float64(o.sizeMiB) * mib
	fmt.Printf("layer %s, %d MiB; %d rounds, each: a direct pull, then a cold and a cached pull through a fresh supernode + dfdaemon, then a pull through a second fresh dfdaemon\n\n",
		layer, o.sizeMiB, o.rounds)

	blobURL := reg.URL.String() + "/v2/" + streamRepo + "/blobs/" + layer.String()
	var direct, cold, warm, second, coldRSS, warmRSS, secondRSS, snRSS, floorCold, floorHeld, floorChecked []float64
	for round := range o.rounds {
		d, err := timedPull(ctx, "direct", blobURL, layer)
		if err != nil {
			return fmt.Errorf("round %d: direct: %w", round+1, err)
		}
		direct = append(direct, size/d.Seconds())

		res, err := streamRound(ctx, o, filepath.Join(work, fmt.Sprintf("round-%d", round)), reg.URL.String(), layer)
		if err != nil {
			return fmt.Errorf("round %d: %w", round+1, err)
		}
		cold = append(cold, size/res.cold.Seconds())
		warm = append(warm, size/res.warm.Seconds())
		second = append(second, size/res.second.Seconds())
		secondRSS = append(secondRSS, float64(res.secondRSS))
		coldRSS = append(coldRSS, float64(res.coldRSS))
		warmRSS = append(warmRSS, float64(res.warmRSS))
		snRSS = append(snRSS, float64(res.supernodeRSS))
		fmt.Printf("round %d: direct %.0f MiB/s; dfdaemon cold %.0f MiB/s (peak RSS %.0f MiB), cached %.0f MiB/s (%.0f MiB); second dfdaemon from the CDN copy %.0f MiB/s (%.0f MiB); supernode peak RSS %.0f MiB\n",
			round+1, direct[round]/mib, cold[round]/mib, coldRSS[round]/mib, warm[round]/mib, warmRSS[round]/mib, second[round]/mib, secondRSS[round]/mib, snRSS[round]/mib)
		fmt.Printf("  CPU time: cold pull %.1fs (supernode %.1fs, dfdaemon %.1fs) in %.1fs; second dfdaemon's pull %.1fs (supernode %.1fs, dfdaemon %.1fs) in %.1fs\n",
			(res.coldCPU[0] + res.coldCPU[1]).Seconds(), res.coldCPU[0].Seconds(), res.coldCPU[1].Seconds(), res.cold.Seconds(),
			(res.secondCPU[0] + res.secondCPU[1]).Seconds(), res.secondCPU[0].Seconds(), res.secondCPU[1].Seconds(), res.second.Seconds())

		fl, err := floorRound(ctx, filepath.Join(work, fmt.Sprintf("floor-%d", round)), blobURL, layer)
		if err != nil {
			return fmt.Errorf("round %d: floor: %w", round+1, err)
		}
		floorCold = append(floorCold, size/fl.cold.Seconds())
		floorHeld = append(floorHeld, size/fl.held.Seconds())
		floorChecked = append(floorChecked, size/fl.checked.Seconds())
		fmt.Printf("  floor (minimal relays): cold %.0f MiB/s, CPU %.1fs (cdn relay %.1fs, node relay %.1fs) in %.1fs; from the held copy %.0f MiB/s, CPU %.1fs (%.1fs, %.1fs) in %.1fs; checked %.0f MiB/s, CPU %.1fs (%.1fs, %.1fs) in %.1fs\n",
			floorCold[round]/mib, (fl.coldCPU[0] + fl.coldCPU[1]).Seconds(), fl.coldCPU[0].Seconds(), fl.coldCPU[1].Seconds(), fl.cold.Seconds(),
			floorHeld[round]/mib, (fl.heldCPU[0] + fl.heldCPU[1]).Seconds(), fl.heldCPU[0].Seconds(), fl.heldCPU[1].Seconds(), fl.held.Seconds(),
			floorChecked[round]/mib, (fl.checkedCPU[0] + fl.checkedCPU[1]).Seconds(), fl.checkedCPU[0].Seconds(), fl.checkedCPU[1].Seconds(), fl.checked.Seconds())
	}

	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "pull\tmedian MiB/s\tmin\tmax\tvs direct\tdfdaemon peak RSS (max)\t")
	row := func(name string, xs, rss []float64) {
		ratio := median(xs) / median(direct)
		r := "-"
		if rss != nil {
			r = fmt.Sprintf("%.0f MiB", slices.Max(rss)/mib)
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.0f\t%.0f\t%.2fx\t%s\t\n", name, median(xs)/mib, slices.Min(xs)/mib, slices.Max(xs)/mib, ratio, r)
	}
	row("direct from registry", direct, nil)
	row("dfdaemon, cold (P2P)", cold, coldRSS)
	row("dfdaemon, cached", warm, warmRSS)
	row("2nd dfdaemon, from CDN copy", second, secondRSS)
	row("floor: minimal relays, cold", floorCold, nil)
	row("floor: relays, held copy", floorHeld, nil)
	row("floor: held copy, checked", floorChecked, nil)
	tw.Flush()
	fmt.Printf("\nof the floor: dfdaemon cold %.2fx, 2nd dfdaemon from the CDN copy %.2fx (%.2fx of the checked floor)\n",
		median(cold)/median(floorCold), median(second)/median(floorHeld), median(second)/median(floorChecked))
	fmt.Printf("\nsupernode peak RSS (max over rounds): %.0f MiB\n", slices.Max(snRSS)/mib)
	fmt.Printf("targets: dfdaemon cold >= 0.9x direct: %s; dfdaemon peak RSS <= 100 MB: %s\n",
		verdict(median(cold)/median(direct) >= 0.9), verdict(max(slices.Max(warmRSS), slices.Max(secondRSS)) <= 100e6))
	return nil
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// median returns the median of xs (the mean of the middle two for an even
// count).
func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n == 0 {
		return 0
	}
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// pushStreamImage pushes streamRepo:latest with one layer of size random
// bytes. The layer is never unpacked, so its blob is the random bytes
// themselves rather than a gzipped tar: generating and gzipping a 1 GiB tar
// would take three copies in memory for nothing the benchmark looks at.
func pushStreamImage(ctx context.Context, reg *registrytest.Registry, size int64) (digest.Digest, error) {
	blob := make([]byte, size)
	if _, err := rand.Read(blob); err != nil {
		return "", err
	}
	d := digest.FromBytes(blob)
	img, err := reg.PushImage(ctx, streamRepo, "latest", []registrytest.Layer{{Blob: blob, DiffID: d}})
	if err != nil {
		return "", err
	}
	if len(img.Layers) != 1 || img.Layers[0].Digest != d {
		return "", fmt.Errorf("pushed layers %v, want %s", img.Layers, d)
	}
	return d, nil
}

type streamResult struct {
	cold, warm, second                        time.Duration
	coldRSS, warmRSS, secondRSS, supernodeRSS int64
	// CPU time the supernode and the dfdaemon used during the cold pull and
	// the supernode and the second dfdaemon during the second dfdaemon's.
	coldCPU, secondCPU [2]time.Duration
}

// streamRound starts a supernode and a dfdaemon with empty data dirs under
// dir, pulls the layer through the dfdaemon twice, then through a second
// fresh dfdaemon (whose pieces all come from the supernode's finished CDN
// copy), and stops them.
func streamRound(ctx context.Context, o options, dir, registry string, layer digest.Digest) (res streamResult, err error) {
	defer os.RemoveAll(dir)
	sn, snAddrs, err := startOnFreePorts(ctx, o, "supernode", 1, func(a []string) (string, []string) {
		return "http://" + a[0] + "/healthz", []string{"--listen", a[0], "--data-dir", filepath.Join(dir, "supernode"),
			"--admin-token", "bench", "--log-level", "warn", "--source-allow", "127.0.0.1/32"}
	})
	if err != nil {
		return res, err
	}
	defer sn.stop()
	dfdaemon := func(dataDir string) (*proc, string, error) {
		p, a, err := startOnFreePorts(ctx, o, "dfdaemon", 2, func(a []string) (string, []string) {
			return "http://" + a[0] + "/healthz", []string{"--listen", a[0], "--peer-listen", a[1], "--advertise-ip", "127.0.0.1",
				"--node", snAddrs[0], "--registry", registry, "--data-dir", filepath.Join(dir, dataDir),
				"--log-level", "warn", "--source-allow", "127.0.0.1/32", "--peer-allow", "127.0.0.1/32"}
		})
		if err != nil {
			return nil, "", err
		}
		return p, a[0], nil
	}
	dfd, listen, err := dfdaemon("dfdaemon")
	if err != nil {
		return res, err
	}
	defer dfd.stop()
	dfd2, listen2, err := dfdaemon("dfdaemon2")
	if err != nil {
		return res, err
	}
	defer dfd2.stop()
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\nsupernode: %s\ndfdaemon: %s", err, sn.stderr.String(), dfd.stderr.String())
		}
	}()

	url := "http://" + listen + "/v2/" + streamRepo + "/blobs/" + layer.String()
	cpu0, err := cpuTimes(sn, dfd)
	if err != nil {
		return res, err
	}
	if res.cold, err = timedPull(ctx, "dfdaemon, cold", url, layer); err != nil {
		return res, fmt.Errorf("dfdaemon cold: %w", err)
	}
	if res.coldCPU, err = cpuTimes(sn, dfd); err != nil {
		return res, err
	}
	res.coldCPU[0] -= cpu0[0]
	res.coldCPU[1] -= cpu0[1]
	if res.coldRSS, err = dfd.peakRSS(); err != nil {
		return res, err
	}
	if res.warm, err = timedPull(ctx, "dfdaemon, cached", url, layer); err != nil {
		return res, fmt.Errorf("dfdaemon cached: %w", err)
	}
	if res.warmRSS, err = dfd.peakRSS(); err != nil {
		return res, err
	}
	// The first dfdaemon is still a seed; stop it so that every piece comes
	// from the supernode's CDN copy.
	dfd.stop()
	if cpu0, err = cpuTimes(sn, dfd2); err != nil {
		return res, err
	}
	if res.second, err = timedPull(ctx, "2nd dfdaemon, from CDN copy", "http://"+listen2+"/v2/"+streamRepo+"/blobs/"+layer.String(), layer); err != nil {
		return res, fmt.Errorf("second dfdaemon: %w", err)
	}
	if res.secondCPU, err = cpuTimes(sn, dfd2); err != nil {
		return res, err
	}
	res.secondCPU[0] -= cpu0[0]
	res.secondCPU[1] -= cpu0[1]
	if res.secondRSS, err = dfd2.peakRSS(); err != nil {
		return res, err
	}
	if res.supernodeRSS, err = sn.peakRSS(); err != nil {
		return res, err
	}
	return res, nil
}

func cpuTimes(sn, dfd *proc) (t [2]time.Duration, err error) {
	if t[0], err = sn.cpuTime(); err != nil {
		return t, err
	}
	t[1], err = dfd.cpuTime()
	return t, err
}

// timedPull GETs url, checks that the body's sha256 is want and returns how
// long it took from sending the request to the last byte. It also logs when
// the first byte and the last 64 KiB arrived: dfdaemon holds the last 64 KiB
// back until the whole blob is verified and committed.
func timedPull(ctx context.Context, label, url string, want digest.Digest) (time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		return 0, fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	h := sha256.New()
	buf := make([]byte, 256<<10)
	var n int64
	var first, tail time.Duration
	for {
		m, rerr := resp.Body.Read(buf)
		if m > 0 {
			if n == 0 {
				first = time.Since(start)
			}
			n += int64(m)
			h.Write(buf[:m])
			if tail == 0 && resp.ContentLength > 0 && n >= resp.ContentLength-64<<10 {
				tail = time.Since(start)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return 0, fmt.Errorf("GET %s: after %d bytes: %w", url, n, rerr)
		}
	}
	took := time.Since(start)
	if got := digest.NewDigest(digest.SHA256, h); got != want {
		return 0, fmt.Errorf("GET %s: %d bytes of digest %s, want %s", url, n, got, want)
	}
	fmt.Printf("  %-28s first byte %.2fs, all but the last 64 KiB at %.2fs, done %.2fs\n", label+":", first.Seconds(), tail.Seconds(), took.Seconds())
	return took, nil
}
