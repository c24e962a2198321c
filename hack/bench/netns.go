package main

// The swarm suite's -net netns: every node, the supernode (or the
// pull-through cache) and the origin in a network namespace of its own,
// each joined by a veth pair to one Linux bridge in a hub namespace, like
// hosts on one LAN, and every link shaped by the kernel (tc tbf) instead of
// the in-process token buckets of -net loopback.
//
// The pure part (names, addresses, the ip and tc commands, which
// namespaces a sweep removes) is planned by functions without side effects
// that the unit tests check; runNet runs the commands.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/damselfly/damselfly/hack/internal/promtext"
)

// The swarm suite's networks (-net).
const (
	netLoopback = "loopback"
	netNetns    = "netns"
)

// netPrefix starts the name of every namespace and interface a run
// creates; the bench's PID follows, so parallel runs never collide and a
// later run can tell a dead run's leftovers (sweepStale).
const netPrefix = "dfb"

// maxIfName is the longest Linux interface name (IFNAMSIZ - 1).
const maxIfName = 15

// Addresses: a private /16 (allowed by pkg/netpolicy's default policy,
// which denies loopback and link-local only). The origin is .0.2, the
// supernode or pull-through cache .0.3, node i 10.77.(1 + i/250).(1 + i%250).
var (
	netSubnet  = netip.MustParsePrefix("10.77.0.0/16")
	originAddr = netip.MustParseAddr("10.77.0.2")
	svcAddr    = netip.MustParseAddr("10.77.0.3")
	nodeBase   = netip.MustParseAddr("10.77.1.0")
)

// Fixed ports: each namespace has a port space of its own.
const (
	snPort      = 8002
	mirrorPort  = 65001
	peerPort    = 65002
	tbfLatency  = "100ms"
	tbfMinBurst = 64 << 10
)

// netPlan names a run's hub and its origin host.
type netPlan struct {
	prefix string // netPrefix + PID
	hub    string // the hub namespace, holding the bridge
	bridge string
	origin nsHost
}

// nsHost is one namespace joined to the bridge: a veth pair, dev inside
// the namespace with addr, hubDev enslaved to the bridge. egress shapes
// dev (what the host sends: its upload), ingress shapes hubDev (what the
// bridge sends the host: its download); 0 leaves the direction unshaped.
type nsHost struct {
	role            string
	ns, dev, hubDev string
	addr            netip.Addr
	egress, ingress int64 // bytes/s
}

func newNetPlan(pid int, originRate int64) (netPlan, error) {
	p := netPlan{prefix: netPrefix + strconv.Itoa(pid)}
	p.hub, p.bridge = p.prefix+"-hub", p.prefix+"br"
	var err error
	p.origin, err = p.host("origin", "o", originAddr, originRate, 0)
	if err != nil {
		return p, err
	}
	if len(p.bridge) > maxIfName {
		return p, fmt.Errorf("interface name %q is longer than %d characters", p.bridge, maxIfName)
	}
	return p, nil
}

// host plans the host tag (o, s, n<i>).
func (p netPlan) host(role, tag string, addr netip.Addr, egress, ingress int64) (nsHost, error) {
	h := nsHost{role: role, ns: p.prefix + "-" + tag, dev: p.prefix + tag, hubDev: p.prefix + tag + "b", addr: addr, egress: egress, ingress: ingress}
	if len(h.hubDev) > maxIfName {
		return h, fmt.Errorf("interface name %q is longer than %d characters", h.hubDev, maxIfName)
	}
	if !netSubnet.Contains(addr) {
		return h, fmt.Errorf("%s: address %s outside %s", role, addr, netSubnet)
	}
	return h, nil
}

// scenarioHosts plans a scenario's hosts: the service host (supernode or
// pull-through cache; egress svcUp) and n nodes (egress up, ingress down).
func (p netPlan) scenarioHosts(n int, up, down, svcUp int64) (svc nsHost, nodes []nsHost, err error) {
	if svc, err = p.host("service", "s", svcAddr, svcUp, 0); err != nil {
		return
	}
	for i := range n {
		a, err := nodeAddr(i)
		if err != nil {
			return svc, nil, err
		}
		h, err := p.host(fmt.Sprintf("node %d", i), "n"+strconv.Itoa(i), a, up, down)
		if err != nil {
			return svc, nil, err
		}
		nodes = append(nodes, h)
	}
	return svc, nodes, nil
}

// nodeAddr is node i's address: 10.77.(1 + i/250).(1 + i%250).
func nodeAddr(i int) (netip.Addr, error) {
	b := nodeBase.As4()
	if i < 0 || i >= 250*250 {
		return netip.Addr{}, fmt.Errorf("node %d: the plan has addresses for 62500 nodes", i)
	}
	b[2] += byte(i / 250)
	b[3] = byte(1 + i%250)
	return netip.AddrFrom4(b), nil
}

// tcRate is bytes/s in tc's units. tc reads "bps" as bytes per second and
// "bit" as bits per second; bits are spelled out so nobody has to remember.
func tcRate(bytesPerSec int64) string { return strconv.FormatInt(bytesPerSec*8, 10) + "bit" }

// tbfBurst is 20 ms of bytes (the in-process limiters' burst), at least
// 64 KiB so that one GSO packet fits.
func tbfBurst(bytesPerSec int64) int64 { return max(bytesPerSec/50, tbfMinBurst) }

func tbfCmd(ns, dev string, bytesPerSec int64) []string {
	return []string{"tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf",
		"rate", tcRate(bytesPerSec), "burst", strconv.FormatInt(tbfBurst(bytesPerSec), 10), "latency", tbfLatency}
}

// hubCmds create the hub namespace and its bridge.
func (p netPlan) hubCmds() [][]string {
	return [][]string{
		{"ip", "netns", "add", p.hub},
		{"ip", "-n", p.hub, "link", "add", p.bridge, "type", "bridge"},
		{"ip", "-n", p.hub, "link", "set", p.bridge, "up"},
	}
}

// hostCmds create h's namespace, join it to the bridge and shape it.
func (p netPlan) hostCmds(h nsHost) [][]string {
	cmds := [][]string{
		{"ip", "netns", "add", h.ns},
		{"ip", "link", "add", h.dev, "netns", h.ns, "type", "veth", "peer", "name", h.hubDev, "netns", p.hub},
		{"ip", "-n", p.hub, "link", "set", h.hubDev, "master", p.bridge},
		{"ip", "-n", p.hub, "link", "set", h.hubDev, "up"},
		{"ip", "-n", h.ns, "link", "set", "lo", "up"},
		{"ip", "-n", h.ns, "addr", "add", netip.PrefixFrom(h.addr, netSubnet.Bits()).String(), "dev", h.dev},
		{"ip", "-n", h.ns, "link", "set", h.dev, "up"},
	}
	if h.egress > 0 {
		cmds = append(cmds, tbfCmd(h.ns, h.dev, h.egress))
	}
	if h.ingress > 0 {
		cmds = append(cmds, tbfCmd(p.hub, h.hubDev, h.ingress))
	}
	return cmds
}

// deleteCmds remove namespaces, in order; a namespace's veth goes with it
// and the bridge with the hub.
func deleteCmds(nss ...string) [][]string {
	out := make([][]string, len(nss))
	for i, ns := range nss {
		out[i] = []string{"ip", "netns", "delete", ns}
	}
	return out
}

var staleNS = regexp.MustCompile(`^` + netPrefix + `([0-9]+)-`)

// staleNamespaces picks from `ip netns list` output the namespaces of runs
// whose process is gone, hubs last.
func staleNamespaces(list string, alive func(pid int) bool) []string {
	var out, hubs []string
	for line := range strings.SplitSeq(list, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		m := staleNS.FindStringSubmatch(f[0])
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || alive(pid) {
			continue
		}
		if strings.HasSuffix(f[0], "-hub") {
			hubs = append(hubs, f[0])
		} else {
			out = append(out, f[0])
		}
	}
	return append(out, hubs...)
}

func pidAlive(pid int) bool {
	_, err := os.Stat("/proc/" + strconv.Itoa(pid))
	return err == nil
}

// runNet is a run's network: the hub and the origin's namespace, and the
// scenario namespaces added to it.
type runNet struct {
	plan netPlan
	mu   sync.Mutex
	live []string // namespaces created and not deleted, in creation order
}

// checkNetns says why -net netns cannot run here, if it cannot.
func checkNetns() error {
	if os.Geteuid() != 0 {
		return errors.New("-net netns needs root (network namespaces, veth, bridge and tc); run as root or use -net loopback")
	}
	for _, t := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("-net netns needs %q (iproute2: apt-get install iproute2): %w", t, err)
		}
	}
	return nil
}

// run runs one command with a bound.
func runCmd(ctx context.Context, argv []string) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// sweepStale deletes the namespaces of earlier runs whose process is gone.
func sweepStale(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, c := range deleteCmds(staleNamespaces(string(out), pidAlive)...) {
		if err := runCmd(ctx, c); err != nil {
			fmt.Fprintln(os.Stderr, "bench: sweeping a stale namespace:", err)
		} else {
			fmt.Println("removed stale namespace", c[len(c)-1])
		}
	}
}

// setupRunNet creates the hub and the origin's namespace.
func setupRunNet(ctx context.Context, originRate int64) (*runNet, error) {
	if err := checkNetns(); err != nil {
		return nil, err
	}
	sweepStale(ctx)
	plan, err := newNetPlan(os.Getpid(), originRate)
	if err != nil {
		return nil, err
	}
	r := &runNet{plan: plan}
	if err := r.create(ctx, plan.hub, plan.hubCmds()); err != nil {
		r.close()
		return nil, err
	}
	if err := r.addHosts(ctx, plan.origin); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

// create runs cmds, whose first creates namespace ns.
func (r *runNet) create(ctx context.Context, ns string, cmds [][]string) error {
	for i, c := range cmds {
		if err := runCmd(ctx, c); err != nil {
			return err
		}
		if i == 0 {
			r.mu.Lock()
			r.live = append(r.live, ns)
			r.mu.Unlock()
		}
	}
	return nil
}

func (r *runNet) addHosts(ctx context.Context, hs ...nsHost) error {
	for _, h := range hs {
		if err := r.create(ctx, h.ns, r.plan.hostCmds(h)); err != nil {
			return fmt.Errorf("%s: %w", h.role, err)
		}
	}
	return nil
}

// removeHosts deletes the hosts' namespaces; processes still in one (our
// children that did not stop) are killed first, or the namespace and its
// veth would outlive its name.
func (r *runNet) removeHosts(hs ...nsHost) error {
	nss := make([]string, len(hs))
	devs := make([]string, len(hs))
	for i, h := range hs {
		nss[i], devs[i] = h.ns, h.hubDev
	}
	if err := r.remove(nss...); err != nil {
		return err
	}
	return r.waitGone(devs)
}

// waitGone waits until the hub holds none of devs: the kernel removes a
// deleted namespace's devices (and so the veths' bridge ends) in the
// background, and the next scenario reuses the names.
func (r *runNet) waitGone(devs []string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		out, err := exec.CommandContext(ctx, "ip", "-n", r.plan.hub, "-o", "link", "show").Output()
		cancel()
		if err != nil {
			return fmt.Errorf("ip -n %s link show: %w", r.plan.hub, err)
		}
		left := presentDevs(string(out), devs)
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after 30s the hub still holds %s", strings.Join(left, ", "))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// presentDevs are the devs that `ip -o link show` output lists.
func presentDevs(out string, devs []string) []string {
	have := map[string]bool{}
	for line := range strings.SplitSeq(out, "\n") {
		// "12: name@if11: <...> ..."
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		have[name] = true
	}
	var left []string
	for _, d := range devs {
		if have[d] {
			left = append(left, d)
		}
	}
	return left
}

func (r *runNet) remove(nss ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	for _, ns := range nss {
		r.mu.Lock()
		i := indexOf(r.live, ns)
		r.mu.Unlock()
		if i < 0 {
			continue
		}
		if out, err := exec.CommandContext(ctx, "ip", "netns", "pids", ns).Output(); err == nil {
			for f := range strings.FieldsSeq(string(out)) {
				if pid, err := strconv.Atoi(f); err == nil {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		if err := runCmd(ctx, deleteCmds(ns)[0]); err != nil {
			errs = append(errs, err)
			continue
		}
		r.mu.Lock()
		if i := indexOf(r.live, ns); i >= 0 {
			r.live = append(r.live[:i], r.live[i+1:]...)
		}
		r.mu.Unlock()
	}
	return errors.Join(errs...)
}

// close deletes every namespace still there, the hub last.
func (r *runNet) close() {
	if err := r.remove(closeOrder(r.snapshot(), r.plan.hub)...); err != nil {
		fmt.Fprintln(os.Stderr, "bench: removing namespaces:", err)
	}
}

func (r *runNet) snapshot() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.live...)
}

// closeOrder is live in reverse creation order with the hub last.
func closeOrder(live []string, hub string) []string {
	var out []string
	for i := len(live) - 1; i >= 0; i-- {
		if live[i] != hub {
			out = append(out, live[i])
		}
	}
	if indexOf(live, hub) >= 0 {
		out = append(out, hub)
	}
	return out
}

func indexOf(xs []string, s string) int {
	for i, x := range xs {
		if x == s {
			return i
		}
	}
	return -1
}

// netnsSignals cancels ctx on SIGINT and SIGTERM so that the deferred
// teardown runs.
func netnsSignals(ctx context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
}

// nsCommand runs path with args in namespace ns (none: here). ip netns exec
// execs, so the process keeps the PID that /proc is read at.
func nsCommand(ns, path string, args ...string) *exec.Cmd {
	if ns == "" {
		return exec.Command(path, args...)
	}
	return exec.Command("ip", append([]string{"netns", "exec", ns, path}, args...)...)
}

// nsHTTPClient is an HTTP client whose connections are made in namespace
// ns: the bench stays in the root namespace and reaches the daemons' health,
// metrics and the origin's control this way. Connections are not kept, so
// that no socket of the bench holds a namespace after its deletion.
func nsHTTPClient(ns string) *http.Client {
	if ns == "" {
		return http.DefaultClient
	}
	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return dialInNS(ctx, ns, network, addr)
	}}
	return &http.Client{Transport: tr, Timeout: time.Minute}
}

// dialInNS dials from namespace ns: on a locked OS thread switched to ns,
// where the socket is created (a socket stays in the namespace it was made
// in), then switched back. A thread that cannot switch back is never
// unlocked, so Go ends it with the goroutine.
func dialInNS(ctx context.Context, ns, network, addr string) (net.Conn, error) {
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			ch <- res{nil, err}
			return
		}
		defer orig.Close()
		target, err := os.Open("/run/netns/" + ns)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- res{nil, err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- res{nil, fmt.Errorf("setns %s: %w", ns, err)}
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		ch <- res{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// scrape is promtext.Scrape with a client.
func scrape(ctx context.Context, hc *http.Client, url string) (promtext.Text, error) {
	return promtext.ScrapeWith(ctx, hc, url)
}

// clientResult is what a -serve client child prints when its pull ends.
type clientResult struct {
	Error string       `json:"error,omitempty"`
	Done  int64        `json:"done"` // ns since the start
	Blobs []clientBlob `json:"blobs"`
}

type clientBlob struct {
	Digest     string `json:"digest"`
	Size       int64  `json:"size"`
	Start, End int64  // ns since the start
}

// serveClient is a node's runtime (-serve client): it prints a ready line,
// reads the common start (Unix ns) on stdin, pulls the image from
// -upstream (the node's mirror), prints a clientResult and exits when
// stdin closes, so that the parent reads its CPU time before it exits.
func serveClient(ctx context.Context, o options) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.upstream == "" {
		return errors.New("-serve client needs -upstream")
	}
	fmt.Println("{}")
	in := bufio.NewReader(os.Stdin)
	line, err := in.ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading the start: %w", err)
	}
	ns, err := strconv.ParseInt(strings.TrimSpace(line), 10, 64)
	if err != nil {
		return fmt.Errorf("start %q: %w", line, err)
	}
	r, err := pullImage(ctx, o.upstream, swarmRepo, swarmTag, nil, o.parallel, time.Unix(0, ns))
	res := clientResult{Done: int64(r.done)}
	if err != nil {
		res.Error = err.Error()
	}
	for _, b := range r.blobs {
		res.Blobs = append(res.Blobs, clientBlob{Digest: b.digest.String(), Size: b.size, Start: int64(b.start), End: int64(b.end)})
	}
	b, _ := json.Marshal(res)
	fmt.Println(string(b))
	done := make(chan struct{})
	go func() { _, _ = io.Copy(io.Discard, in); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	case <-time.After(time.Minute):
	}
	return nil
}

// nsClientProc is a running client child.
type nsClientProc struct {
	*proc
	stdin io.WriteCloser
	lines chan string
}

func startNSClient(ctx context.Context, ns, base string, parallel int) (*nsClientProc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	p := &proc{name: "client in " + ns, stderr: &lockedBuffer{}}
	p.cmd = nsCommand(ns, self, "-serve", "client", "-upstream", base, "-parallel", strconv.Itoa(parallel))
	p.cmd.Stderr = p.stderr
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	in, err := p.cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", p.name, err)
	}
	p.watch()
	c := &nsClientProc{proc: p, stdin: in, lines: make(chan string, 2)}
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
	}()
	if _, err := c.next(ctx, 30*time.Second); err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

// next waits for the next stdout line.
func (c *nsClientProc) next(ctx context.Context, d time.Duration) (string, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case l, ok := <-c.lines:
		if !ok {
			return "", fmt.Errorf("%s exited: %s", c.name, c.stderr.String())
		}
		return l, nil
	case <-t.C:
		return "", fmt.Errorf("%s: no answer after %s: %s", c.name, d, c.stderr.String())
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func (c *nsClientProc) close() {
	_ = c.stdin.Close()
	select {
	case <-c.exited:
	case <-time.After(5 * time.Second):
	}
	c.stop()
}

// pullInNamespaces runs one client child per node, in the node's namespace
// against bases[i], all started at once, and returns their pulls and the
// CPU seconds they used from the start to their results.
func pullInNamespaces(ctx context.Context, nodes []nsHost, bases []string, parallel int, budget time.Duration) ([]pullResult, float64, error) {
	cs := make([]*nsClientProc, len(nodes))
	defer func() {
		var wg sync.WaitGroup
		for _, c := range cs {
			if c != nil {
				wg.Go(c.close)
			}
		}
		wg.Wait()
	}()
	var wg sync.WaitGroup
	errs := make([]error, len(nodes))
	for i, h := range nodes {
		wg.Go(func() { cs[i], errs[i] = startNSClient(ctx, h.ns, bases[i], parallel) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, 0, err
	}
	cpu0 := make([]float64, len(cs))
	for i, c := range cs {
		d, err := c.cpuTime()
		if err != nil {
			return nil, 0, err
		}
		cpu0[i] = d.Seconds()
	}
	start := strconv.FormatInt(time.Now().UnixNano(), 10) + "\n"
	for _, c := range cs {
		if _, err := io.WriteString(c.stdin, start); err != nil {
			return nil, 0, fmt.Errorf("%s: %w", c.name, err)
		}
	}
	pulls := make([]pullResult, len(cs))
	var cpu float64
	for i, c := range cs {
		line, err := c.next(ctx, budget)
		if err != nil {
			return nil, 0, fmt.Errorf("client %d: %w", i, err)
		}
		var r clientResult
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return nil, 0, fmt.Errorf("client %d: result %q: %w", i, line, err)
		}
		if r.Error != "" {
			return nil, 0, fmt.Errorf("client %d: %s", i, r.Error)
		}
		d, err := c.cpuTime()
		if err != nil {
			return nil, 0, err
		}
		cpu += d.Seconds() - cpu0[i]
		pulls[i] = r.pullResult()
	}
	return pulls, cpu, nil
}

func (r clientResult) pullResult() pullResult {
	p := pullResult{done: time.Duration(r.Done)}
	for _, b := range r.Blobs {
		p.blobs = append(p.blobs, blobTiming{digest: digest.Digest(b.Digest), size: b.Size, start: time.Duration(b.Start), end: time.Duration(b.End)})
	}
	return p
}

// netDescription says what -net means, for the header and the Markdown.
func netDescription(n string) string {
	if n == netNetns {
		return "each node, the supernode or cache and the origin in a network namespace of its own on one Linux bridge; links shaped by tc tbf on the veths (a node's upload -upload-rate, download -rate, the origin's egress -origin-rate, the supernode's -cdn-rate or unshaped; rates on the wire, Ethernet, IP and TCP headers included); default outbound policies, no loopback allowances"
	}
	return "everything on 127.0.0.1; links limited by in-process token buckets (dfdaemons' --download-rate/--upload-rate, the clients' readers, the origin throttle)"
}

// startNetnsMode starts a scenario's servers for -net netns: the
// pull-through cache or the supernode in svc's namespace, dfdaemon i in
// node i's, and sets the clients' bases (the origin, the cache, or each
// node's own mirror on 127.0.0.1).
func startNetnsMode(ctx context.Context, o options, org *origin, dir, mode string, svc nsHost, nodes []nsHost, bases []string,
	cache, sn **proc, snAddr *string, dfds *[]*proc, dfdAddrs *[]string) error {
	switch mode {
	case modeDirect:
		for i := range bases {
			bases[i] = org.info.URL
		}
	case modePullThrough:
		p, rl, err := startChildIn(ctx, svc.ns, "pull-through cache", "-serve", "pullthrough", "-upstream", org.info.URL, "-serve-dir", dir, "-serve-addr", svc.addr.String())
		if err != nil {
			return err
		}
		*cache = p
		if err := waitHealthyWith(ctx, nsHTTPClient(svc.ns), rl.URL+"/v2/"); err != nil {
			return err
		}
		for i := range bases {
			bases[i] = rl.URL
		}
	case modeDamselfly:
		addr := netip.AddrPortFrom(svc.addr, snPort).String()
		args := []string{"--listen", addr, "--data-dir", filepath.Join(dir, "supernode"), "--admin-token", "bench", "--log-level", "warn"}
		if o.snConfig != "" {
			args = append(args, "--config", o.snConfig)
		}
		p, err := startProcIn(ctx, o, svc.ns, "supernode", "http://"+addr+"/healthz", args...)
		if err != nil {
			return err
		}
		*sn, *snAddr = p, addr
		mirror := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), mirrorPort).String()
		*dfds, *dfdAddrs = make([]*proc, len(nodes)), make([]string, len(nodes))
		var wg sync.WaitGroup
		errs := make([]error, len(nodes))
		for i, h := range nodes {
			wg.Go(func() {
				args := []string{"--listen", mirror, "--peer-listen", netip.AddrPortFrom(h.addr, peerPort).String(), "--advertise-ip", h.addr.String(),
					"--node", addr, "--registry", org.info.URL, "--data-dir", filepath.Join(dir, fmt.Sprintf("dfdaemon-%d", i)), "--log-level", "warn"}
				if o.dfdConfig != "" {
					args = append(args, "--config", o.dfdConfig)
				}
				p, err := startProcIn(ctx, o, h.ns, "dfdaemon", "http://"+mirror+"/healthz", args...)
				(*dfds)[i], errs[i] = p, err
			})
		}
		wg.Wait()
		for i := range nodes {
			(*dfdAddrs)[i] = "http://" + mirror
			bases[i] = "http://" + mirror
		}
		return errors.Join(errs...)
	default:
		return fmt.Errorf("unknown mode %q", mode)
	}
	return nil
}
