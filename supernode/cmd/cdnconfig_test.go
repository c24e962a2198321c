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
