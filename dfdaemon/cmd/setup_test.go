package cmd

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// dfdaemon setup-containerd writes the host files, reports each one and
// each way containerd would ignore them, and --undo takes them back.
func TestSetupContainerdSubcommand(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var out, errs bytes.Buffer
	args := []string{SetupContainerd, "--hosts-dir", dir, "--mirror", "http://127.0.0.1:65001",
		"--registries", "docker.io, http://registry.local:5000", "--containerd-config", filepath.Join(dir, "none.toml")}
	require.NoError(t, Run(t.Context(), args, WithStdout(&out), WithStderr(&errs)))
	require.Contains(t, out.String(), "created "+filepath.Join(dir, "docker.io", "hosts.toml"))
	require.Contains(t, out.String(), "created "+filepath.Join(dir, "registry.local:5000", "hosts.toml"))
	require.Contains(t, errs.String(), "warning: containerd config")
	require.FileExists(t, filepath.Join(dir, "docker.io", "hosts.toml"))

	out.Reset()
	require.NoError(t, Run(t.Context(), append(args, "--undo"), WithStdout(&out), WithStderr(&errs)))
	require.Contains(t, out.String(), "removed "+filepath.Join(dir, "docker.io", "hosts.toml"))
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Empty(t, entries)

	err = Run(t.Context(), []string{SetupContainerd, "--hosts-dir", dir, "--registries", "ftp://x"}, WithStdout(&out), WithStderr(&errs))
	require.ErrorContains(t, err, "scheme")
}
