package cmd

import (
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/peer"
	"github.com/damselfly/damselfly/pkg/ratelimit"
	"github.com/damselfly/damselfly/pkg/schedclient"
)

func TestPieceMinRateFlag(t *testing.T) {
	t.Parallel()
	base := []string{"-u", "http://example.com/f", "-o", "out"}
	o, _, err := parseArgs(append(base, "--piece-min-rate", "256K"))
	require.NoError(t, err)
	require.Equal(t, ratelimit.Rate(256<<10), o.engineConfig().PieceMinRate)
	o, _, err = parseArgs(base)
	require.NoError(t, err)
	require.Equal(t, ratelimit.Rate(peer.DefaultPieceMinRate), o.engineConfig().ApplyDefaults().PieceMinRate)
	for _, bad := range []string{"0", "fast", "-1M"} {
		_, _, err = parseArgs(append(base, "--piece-min-rate", bad))
		require.ErrorIs(t, err, ErrUsage, bad)
	}
}

// While the supernode cannot be reached, or the origin rate-limits, the
// progress line says so.
func TestRenderStatus(t *testing.T) {
	t.Parallel()
	now := time.Now()
	require.Empty(t, renderStatus(peer.Progress{}, now))
	require.Equal(t, " - supernode 10.0.0.5:8002 unreachable for 4s",
		renderStatus(peer.Progress{Unreachable: "10.0.0.5:8002", UnreachableSince: now.Add(-4 * time.Second)}, now))
	require.Equal(t, " - origin rate-limited, retrying in 7s",
		renderStatus(peer.Progress{RetryAfter: now.Add(7 * time.Second)}, now))
	o := &flags{}
	require.Equal(t, "supernode 10.0.0.5:8002 unreachable (connection refused), retrying; P2P gives up after 1m0s without progress",
		eventNotice(peer.Event{Kind: peer.EventUnreachable, Node: "10.0.0.5:8002", Reason: "connection refused"}, o))
}

// The final error of a download that stalled for want of a supernode names
// it.
func TestStallErrorNamesSupernode(t *testing.T) {
	t.Parallel()
	unreachable := &schedclient.UnreachableError{Node: "10.0.0.5:8002", Err: syscall.ECONNREFUSED}
	stalled := fmt.Errorf("%w: %w for 1m0s: pieces: %w", peer.ErrP2PFailed, peer.ErrStalled, unreachable)
	o := &flags{supernodes: []string{"10.0.0.5:8002"}, notbs: true}
	err := describe(stalled, o)
	require.EqualError(t, err, "no piece verified for 1m0s, supernode 10.0.0.5:8002 unreachable and --notbs set")
	require.True(t, errors.Is(err, schedclient.ErrUnreachable))
	o.notbs = false
	require.EqualError(t, describe(stalled, o), "P2P failed: no piece verified for 1m0s, supernode 10.0.0.5:8002 unreachable")
}
