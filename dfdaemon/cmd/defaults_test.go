package cmd

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// The runtime-facing listener is loopback-only by default (the runtimes
// are on the node; the mirror and proxy answer whoever reaches them); the
// upload server stays reachable by peers.
func TestListenDefaultsToLoopback(t *testing.T) {
	t.Parallel()
	cfg := Config{}.ApplyDefaults()
	require.Equal(t, "127.0.0.1:65001", cfg.Listen)
	require.Equal(t, ":65002", cfg.PeerListen)
}
