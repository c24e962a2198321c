package main

import (
	"context"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/netpolicy"
)

func TestTCRate(t *testing.T) {
	// tc: "bit" is bits/s, "bps" bytes/s; the bench spells out bits.
	require.Equal(t, "67108864bit", tcRate(8<<20))
	require.Equal(t, "8bit", tcRate(1))
	require.Equal(t, "160000000bit", tcRate(20_000_000))
	require.Equal(t, int64(8<<20/50), tbfBurst(8<<20))
	require.Equal(t, int64(64<<10), tbfBurst(1<<20))
	require.Equal(t, []string{"tc", "-n", "ns", "qdisc", "replace", "dev", "d", "root", "tbf", "rate", "67108864bit", "burst", "167772", "latency", tbfLatency},
		tbfCmd("ns", "d", 8<<20))
}

func TestNetPlan(t *testing.T) {
	// The largest PID Linux hands out (pid_max 2^22) and 1000 nodes still
	// give names of at most 15 characters.
	for _, pid := range []int{1, 4194304} {
		p, err := newNetPlan(pid, 8<<20)
		require.NoError(t, err)
		svc, nodes, err := p.scenarioHosts(1000, 8<<20, 8<<20, 0)
		require.NoError(t, err)
		hosts := append([]nsHost{p.origin, svc}, nodes...)
		seenNS, seenDev, seenAddr := map[string]bool{}, map[string]bool{}, map[netip.Addr]bool{}
		pol, err := netpolicy.New(netpolicy.Config{})
		require.NoError(t, err)
		for _, h := range hosts {
			for _, d := range []string{h.dev, h.hubDev} {
				require.LessOrEqual(t, len(d), maxIfName, d)
				require.True(t, strings.HasPrefix(d, p.prefix), d)
				require.False(t, seenDev[d], "duplicate interface %s", d)
				seenDev[d] = true
			}
			require.True(t, strings.HasPrefix(h.ns, p.prefix+"-"), h.ns)
			require.NotEqual(t, p.hub, h.ns)
			require.False(t, seenNS[h.ns], "duplicate namespace %s", h.ns)
			seenNS[h.ns] = true
			require.True(t, netSubnet.Contains(h.addr), h.addr)
			require.False(t, seenAddr[h.addr], "duplicate address %s", h.addr)
			seenAddr[h.addr] = true
			// The default outbound policy (no allowances) lets every
			// daemon reach every host of the plan.
			require.NoError(t, pol.Check(h.addr), h.addr)
		}
		require.LessOrEqual(t, len(p.bridge), maxIfName)
		require.False(t, seenDev[p.bridge])
	}
	p, err := newNetPlan(42, 3<<20)
	require.NoError(t, err)
	require.Equal(t, "dfb42-hub", p.hub)
	require.Equal(t, nsHost{role: "origin", ns: "dfb42-o", dev: "dfb42o", hubDev: "dfb42ob", addr: originAddr, egress: 3 << 20}, p.origin)
	svc, nodes, err := p.scenarioHosts(2, 1<<20, 2<<20, 0)
	require.NoError(t, err)
	require.Equal(t, "10.77.0.3", svc.addr.String())
	require.Zero(t, svc.egress)
	require.Equal(t, "10.77.1.2", nodes[1].addr.String())
	require.Equal(t, int64(1<<20), nodes[1].egress)  // upload
	require.Equal(t, int64(2<<20), nodes[1].ingress) // download
	a, err := nodeAddr(250)
	require.NoError(t, err)
	require.Equal(t, "10.77.2.1", a.String())
	a, err = nodeAddr(62499)
	require.NoError(t, err)
	require.Equal(t, "10.77.250.250", a.String())
	_, err = nodeAddr(62500)
	require.Error(t, err)
	// 10000 nodes: names still fit, with 7-digit PIDs too
	_, _, err = p.scenarioHosts(10000, 0, 0, 0)
	require.NoError(t, err)
	p7, err := newNetPlan(4194304, 0)
	require.NoError(t, err)
	_, _, err = p7.scenarioHosts(1001, 0, 0, 0)
	require.Error(t, err, "dfb4194304n1000b is 16 characters")
}

func TestHostCmds(t *testing.T) {
	p, err := newNetPlan(42, 0)
	require.NoError(t, err)
	_, nodes, err := p.scenarioHosts(1, 1<<20, 2<<20, 0)
	require.NoError(t, err)
	cmds := p.hostCmds(nodes[0])
	require.Equal(t, []string{"ip", "netns", "add", "dfb42-n0"}, cmds[0], "the first command creates the namespace")
	require.Contains(t, cmds, []string{"ip", "-n", "dfb42-n0", "addr", "add", "10.77.1.1/16", "dev", "dfb42n0"})
	require.Contains(t, cmds, []string{"ip", "-n", "dfb42-hub", "link", "set", "dfb42n0b", "master", "dfb42br"})
	// upload: egress of the node's end; download: egress of the bridge's
	require.Contains(t, cmds, tbfCmd("dfb42-n0", "dfb42n0", 1<<20))
	require.Contains(t, cmds, tbfCmd("dfb42-hub", "dfb42n0b", 2<<20))
	// unshaped: no tc at all
	for _, c := range p.hostCmds(p.origin) {
		require.NotEqual(t, "tc", c[0])
	}
	require.Equal(t, []string{"ip", "netns", "add", "dfb42-hub"}, p.hubCmds()[0])
}

func TestCleanupPlan(t *testing.T) {
	require.Equal(t, [][]string{{"ip", "netns", "delete", "a"}, {"ip", "netns", "delete", "b"}}, deleteCmds("a", "b"))
	require.Equal(t, []string{"dfb1-n1", "dfb1-n0", "dfb1-o", "dfb1-hub"},
		closeOrder([]string{"dfb1-hub", "dfb1-o", "dfb1-n0", "dfb1-n1"}, "dfb1-hub"))
	require.Equal(t, []string{"dfb1-o"}, closeOrder([]string{"dfb1-o"}, "dfb1-hub"))
	list := "dfb7-n0 (id: 3)\ndfb7-hub (id: 1)\ndfb8-o\nother-ns\ndfb9-hub (id: 0)\ndfbx-hub\n\n"
	alive := func(pid int) bool { return pid == 8 }
	require.Equal(t, []string{"dfb7-n0", "dfb7-hub", "dfb9-hub"}, staleNamespaces(list, alive))
	out := "1: lo: <LOOPBACK,UP> mtu 65536\n5: dfb1n0b@if4: <BROADCAST> mtu 1500 master dfb1br\n7: dfb1br: <BROADCAST> mtu 1500\n"
	require.Equal(t, []string{"dfb1n0b"}, presentDevs(out, []string{"dfb1n0b", "dfb1n1b"}))
	require.Empty(t, presentDevs(out, []string{"dfb1n1b"}))
}

func TestNetDescriptionAndFlagValues(t *testing.T) {
	require.Contains(t, netDescription(netNetns), "tc")
	require.Contains(t, netDescription(netLoopback), "127.0.0.1")
}

// TestNetnsLink builds a run's hub and origin and one node, checks the
// node reaches the origin through the bridge from its namespace (the
// bench's setns dialer), and that teardown leaves nothing. It needs root and
// iproute2, and takes about a second.
func TestNetnsLink(t *testing.T) {
	if checkNetns() != nil {
		t.Skip("needs root and iproute2")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	rn, err := setupRunNet(ctx, 8<<20)
	require.NoError(t, err)
	closed := false
	defer func() {
		if !closed {
			rn.close()
		}
	}()
	svc, nodes, err := rn.plan.scenarioHosts(1, 8<<20, 8<<20, 0)
	require.NoError(t, err)
	require.NoError(t, rn.addHosts(ctx, svc, nodes[0]))
	out, err := exec.CommandContext(ctx, "tc", "-n", nodes[0].ns, "qdisc", "show", "dev", nodes[0].dev).CombinedOutput()
	require.NoError(t, err, string(out))
	require.Contains(t, string(out), "tbf")
	require.Contains(t, string(out), "67108Kbit")
	// The service host reaches the node through the bridge: nothing
	// listens on port 9, so the node answers with a reset.
	c, err := dialInNS(ctx, svc.ns, "tcp", netip.AddrPortFrom(nodes[0].addr, 9).String())
	if err == nil {
		c.Close()
	} else {
		// nothing listens on port 9: refused, not unreachable
		require.Contains(t, err.Error(), "refused")
	}
	require.NoError(t, rn.removeHosts(svc, nodes[0]))
	rn.close()
	closed = true
	out, err = exec.Command("ip", "netns", "list").CombinedOutput()
	require.NoError(t, err)
	require.NotContains(t, string(out), rn.plan.prefix+"-")
	out, err = exec.Command("ip", "link", "show").CombinedOutput()
	require.NoError(t, err)
	require.NotContains(t, string(out), rn.plan.prefix)
}
