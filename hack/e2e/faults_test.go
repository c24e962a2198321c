package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fastExpiry makes the supernode notice dead peers within seconds.
const fastExpiry = `
scheduler:
  peerTTL: 3s
  assignmentTimeout: 10s
`

// A peer killed (SIGKILL, no goodbye) in the middle of the download: the
// others still finish with correct bytes.
func TestPeerKilledMidDownload(t *testing.T) {
	skipShort(t)
	t.Parallel()
	const peers, size = 5, 48 * mib
	o := newOrigin(t, size, 16*mib) // three seconds for one copy
	sn := startSupernode(t, "--config", writeConfig(t, fastExpiry))

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	victimAddr := closedAddr(t)
	victim := startDfget(t, ctx, o.url("k"), filepath.Join(dir, "victim"),
		"--node", sn.addr, "--notbs", "--peer-listen", victimAddr)
	var ds []*dfget
	for i := range peers - 1 {
		ds = append(ds, startDfget(t, ctx, o.url("k"), filepath.Join(dir, fmt.Sprintf("out-%d", i)),
			"--node", sn.addr, "--notbs"))
	}

	// Kill the victim once it holds pieces others may be sent to fetch.
	require.Eventually(t, func() bool {
		for _, task := range sn.tasks(t) {
			for _, p := range task.Peers {
				if p.Addr == victimAddr && p.Pieces >= 2 {
					return true
				}
			}
		}
		return false
	}, time.Minute, 20*time.Millisecond, "victim never held 2 pieces")
	require.NoError(t, victim.cmd.Process.Kill())
	require.Error(t, victim.wait(t, 10*time.Second))

	for i, d := range ds {
		require.NoError(t, d.wait(t, 3*time.Minute), "peer %d stderr:\n%s", i, d.stderr.String())
		require.Equal(t, o.sum, fileSHA256(t, d.out), "peer %d", i)
	}
	require.LessOrEqual(t, float64(o.served.Load()), 1.05*float64(size), "origin egress")
}
