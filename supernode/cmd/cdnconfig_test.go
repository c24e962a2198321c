package cmd

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/bytesize"
)

// CDN sizes read with units, in the file and from --cdn-quota; the flag
// overrides cdn.quota; bad values are reported naming their key or flag.
func TestCDNSizesAndQuota(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "supernode.yaml")
	require.NoError(t, os.WriteFile(p, []byte(`
cdn:
  maxSourceSize: 1T
  minFreeSpace: 2GiB
  quota: 10G
  diskHighWater: 0.8
  diskLowWater: 0.7
  scrubRate: 8M
`), 0o600))
	build := func(args ...string) (Config, error) {
		var f flags
		fset := newFlagSet(&f, io.Discard)
		if err := fset.Parse(args); err != nil {
			return Config{}, err
		}
		return buildConfig(fset, &f, noEnv)
	}
	cfg, err := build("--config", p)
	require.NoError(t, err)
	require.Equal(t, bytesize.Size(1<<40), cfg.CDN.MaxSourceSize)
	require.Equal(t, bytesize.Size(2<<30), cfg.CDN.MinFreeSpace)
	require.Equal(t, bytesize.Size(10<<30), cfg.CDN.Quota)
	require.Equal(t, bytesize.Size(8<<20), cfg.CDN.ScrubRate)
	require.InDelta(t, 0.8, cfg.CDN.DiskHighWater, 0)

	cfg, err = build("--config", p, "--cdn-quota", "100G")
	require.NoError(t, err)
	require.Equal(t, bytesize.Size(100<<30), cfg.CDN.Quota, "the flag overrides cdn.quota")

	_, err = build("--cdn-quota", "lots")
	require.ErrorContains(t, err, "cdn-quota")

	bad := filepath.Join(t.TempDir(), "bad.yaml")
	require.NoError(t, os.WriteFile(bad, []byte("cdn:\n  diskHighWater: 0.5\n  diskLowWater: 0.6\n  scrubInterval: -1s\n"), 0o600))
	_, err = build("--config", bad)
	require.ErrorContains(t, err, "cdn.diskLowWater")
	require.ErrorContains(t, err, "cdn.scrubInterval")
}

// The BitTorrent client's block: cdn.bt, on by default with everything that
// talks to the swarm beyond leeching off; its keys read with units; a bad
// combination is reported under cdn.bt.
func TestCDNBitTorrentConfig(t *testing.T) {
	t.Parallel()
	build := func(yaml string) (Config, error) {
		p := filepath.Join(t.TempDir(), "supernode.yaml")
		require.NoError(t, os.WriteFile(p, []byte(yaml), 0o600))
		var f flags
		fset := newFlagSet(&f, io.Discard)
		if err := fset.Parse([]string{"--config", p}); err != nil {
			return Config{}, err
		}
		return buildConfig(fset, &f, noEnv)
	}
	cfg, err := build("cdn:\n  quota: 1G\n")
	require.NoError(t, err)
	require.True(t, cfg.CDN.BT.On())
	require.False(t, cfg.CDN.BT.Seed || cfg.CDN.BT.DHT || cfg.CDN.BT.UTP || cfg.CDN.BT.WebTorrent)
	require.Equal(t, bytesize.Size(1<<30), cfg.CDN.Quota)

	cfg, err = build("cdn:\n  bt:\n    enabled: false\n")
	require.NoError(t, err)
	require.False(t, cfg.CDN.BT.On())

	cfg, err = build("cdn:\n  bt:\n    downloadRate: 20M\n    seed: true\n    dht: true\n")
	require.NoError(t, err)
	require.EqualValues(t, 20<<20, cfg.CDN.BT.DownloadRate)
	require.True(t, cfg.CDN.BT.Seed && cfg.CDN.BT.DHT)

	_, err = build("cdn:\n  bt:\n    listen: 127.0.0.1:6881\n")
	require.ErrorContains(t, err, "cdn.bt")
	_, err = build("cdn:\n  bt:\n    nonsense: 1\n")
	require.Error(t, err, "unknown keys are refused")
}

// The reference configuration in docs/ reads, key by key, and gives the
// defaults.
func TestReferenceConfigReads(t *testing.T) {
	t.Parallel()
	var f flags
	fset := newFlagSet(&f, io.Discard)
	require.NoError(t, fset.Parse([]string{"--config", filepath.Join("..", "..", "docs", "supernode.yaml")}))
	cfg, err := buildConfig(fset, &f, noEnv)
	require.NoError(t, err)
	require.True(t, cfg.CDN.BT.On())
	def := BTConfig{}.ApplyDefaults()
	require.Equal(t, def.Config, cfg.CDN.BT.Config)
}
