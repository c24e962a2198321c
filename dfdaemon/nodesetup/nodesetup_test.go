package nodesetup

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	toml "github.com/pelletier/go-toml/v2"
	"github.com/stretchr/testify/require"
)

// snapshot reads every file under dir, by relative path.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	require.NoError(t, filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[rel] = string(b)
		return nil
	}))
	return out
}

// hostsFile is what containerd reads from a hosts.toml.
type hostsFile struct {
	Server string `toml:"server"`
	Host   map[string]struct {
		Capabilities []string `toml:"capabilities"`
		SkipVerify   bool     `toml:"skip_verify"`
	} `toml:"host"`
}

func TestSetupAndUndo(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// An existing file of the operator's: kept, backed up, restored.
	existing := "# my registry\nserver = \"https://quay.io\"\n\n[host.\"https://quay-cache.internal\"]\n  capabilities = [\"pull\"]\n"
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "quay.io"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "quay.io", "hosts.toml"), []byte(existing), 0o640))
	// An unrelated registry's file, not in the list: never touched.
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "gcr.io"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "gcr.io", "hosts.toml"), []byte("server = \"https://gcr.io\"\n"), 0o644))
	before := snapshot(t, dir)

	o := Options{HostsDir: dir, Mirror: "http://127.0.0.1:65001", Registries: []string{"docker.io", "quay.io", "http://registry.local:5000", "docker.io"}}
	changes, err := Run(o)
	require.NoError(t, err)
	require.Equal(t, []Change{
		{filepath.Join(dir, "docker.io", "hosts.toml"), "created"},
		{filepath.Join(dir, "quay.io", "hosts.toml"), "updated"},
		{filepath.Join(dir, "registry.local:5000", "hosts.toml"), "created"},
	}, changes)

	for _, tt := range []struct{ dir, server string }{
		{"docker.io", "https://registry-1.docker.io"},
		{"quay.io", "https://quay.io"},
		{"registry.local:5000", "http://registry.local:5000"},
	} {
		b, err := os.ReadFile(filepath.Join(dir, tt.dir, "hosts.toml"))
		require.NoError(t, err)
		var h hostsFile
		require.NoError(t, toml.Unmarshal(b, &h), string(b))
		require.Equal(t, tt.server, h.Server, tt.dir)
		require.Equal(t, []string{"pull", "resolve"}, h.Host["http://127.0.0.1:65001"].Capabilities, tt.dir)
		// dfdaemon is the first host containerd tries.
		first := strings.Index(string(b), "[host.")
		require.Equal(t, first, strings.Index(string(b), `[host."http://127.0.0.1:65001"]`), "%s:\n%s", tt.dir, b)
	}
	quay, err := os.ReadFile(filepath.Join(dir, "quay.io", "hosts.toml"))
	require.NoError(t, err)
	require.Contains(t, string(quay), "# my registry\n", "what the file said is kept")
	require.Contains(t, string(quay), `[host."https://quay-cache.internal"]`)
	fi, err := os.Stat(filepath.Join(dir, "quay.io", "hosts.toml"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o640), fi.Mode().Perm(), "the file's mode is kept")
	backup, err := os.ReadFile(filepath.Join(dir, "quay.io", "hosts.toml"+backupSuffix))
	require.NoError(t, err)
	require.Equal(t, existing, string(backup))

	// Idempotent.
	after := snapshot(t, dir)
	changes, err = Run(o)
	require.NoError(t, err)
	for _, c := range changes {
		require.Equal(t, "unchanged", c.Action, c.Path)
	}
	require.Equal(t, after, snapshot(t, dir))

	// Another mirror address replaces the block, keeps the first backup.
	o2 := o
	o2.Mirror = "http://127.0.0.1:65011/"
	_, err = Run(o2)
	require.NoError(t, err)
	quay, err = os.ReadFile(filepath.Join(dir, "quay.io", "hosts.toml"))
	require.NoError(t, err)
	require.NotContains(t, string(quay), "65001")
	require.Equal(t, 1, strings.Count(string(quay), markerBegin))

	// Undo: byte for byte, created files and directories gone.
	o.Undo = true
	_, err = Run(o)
	require.NoError(t, err)
	require.Equal(t, before, snapshot(t, dir))
	require.NoDirExists(t, filepath.Join(dir, "docker.io"))
	require.NoDirExists(t, filepath.Join(dir, "registry.local:5000"))
	fi, err = os.Stat(filepath.Join(dir, "quay.io", "hosts.toml"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o640), fi.Mode().Perm())
	// A second undo changes nothing.
	_, err = Run(o)
	require.NoError(t, err)
	require.Equal(t, before, snapshot(t, dir))
}

func TestExistingFileWithoutServerOrTables(t *testing.T) {
	t.Parallel()
	for name, body := range map[string]string{
		"empty":           "",
		"comment only":    "# nothing yet",
		"server only":     "server = \"https://ghcr.io\"",
		"tables only":     "[host.\"https://ghcr-cache\"]\n  capabilities = [\"pull\"]\n",
		"skip_verify key": "server = \"https://ghcr.io\"\nskip_verify = true\n",
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			require.NoError(t, os.MkdirAll(filepath.Join(dir, "ghcr.io"), 0o755))
			p := filepath.Join(dir, "ghcr.io", "hosts.toml")
			require.NoError(t, os.WriteFile(p, []byte(body), 0o644))
			_, err := Run(Options{HostsDir: dir, Mirror: "http://127.0.0.1:65001", Registries: []string{"ghcr.io"}})
			require.NoError(t, err)
			b, err := os.ReadFile(p)
			require.NoError(t, err)
			var h hostsFile
			require.NoError(t, toml.Unmarshal(b, &h), string(b))
			require.Equal(t, "https://ghcr.io", h.Server, string(b))
			require.Contains(t, h.Host, "http://127.0.0.1:65001")
			if strings.Contains(body, "skip_verify") {
				var top map[string]any
				require.NoError(t, toml.Unmarshal(b, &top))
				require.Equal(t, true, top["skip_verify"], "top-level keys stay top-level:\n%s", b)
			}
			_, err = Run(Options{HostsDir: dir, Registries: []string{"ghcr.io"}, Undo: true})
			require.NoError(t, err)
			b, err = os.ReadFile(p)
			require.NoError(t, err)
			require.Equal(t, body, string(b))
		})
	}
}

func TestBadOptions(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, o := range []Options{
		{Mirror: "http://127.0.0.1:65001", Registries: []string{"docker.io"}},
		{HostsDir: dir, Mirror: "http://127.0.0.1:65001"},
		{HostsDir: dir, Mirror: "127.0.0.1:65001", Registries: []string{"docker.io"}},
		{HostsDir: dir, Mirror: "http://127.0.0.1:65001/v2/", Registries: []string{"docker.io"}},
		{HostsDir: dir, Mirror: "http://127.0.0.1:65001", Registries: []string{"../etc"}},
		{HostsDir: dir, Mirror: "http://127.0.0.1:65001", Registries: []string{"ftp://x"}},
		{HostsDir: dir, Mirror: "http://127.0.0.1:65001", Registries: []string{"a/b"}},
	} {
		_, err := Run(o)
		require.Error(t, err, "%+v", o)
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Empty(t, entries, "nothing written for bad options")
}

func TestWarnings(t *testing.T) {
	t.Parallel()
	hosts := "/etc/containerd/certs.d"
	tests := []struct {
		name, config string
		want         []string // substrings, one per warning; none: no warning
	}{
		{"v2 with config_path", "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n", nil},
		{"v3 with config_path", "version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n", nil},
		{"no config_path", "version = 2\n", []string{"no config_path"}},
		{"v3 config under the v2 ID", "version = 3\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n", []string{"does not read"}},
		{"list", "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d:/etc/docker/certs.d\"\n", []string{"is a list"}},
		{"list without it", "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/a:/b\"\n", []string{"list without"}},
		{"another dir", "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/docker/certs.d\"\n", []string{"not /etc/containerd/certs.d"}},
		{"inline mirrors", "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://x\"]\n", []string{"inline registry mirrors"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := filepath.Join(t.TempDir(), "config.toml")
			require.NoError(t, os.WriteFile(p, []byte(tt.config), 0o644))
			got := Warnings(p, hosts)
			require.Len(t, got, len(tt.want), "%q", got)
			for i, w := range tt.want {
				require.Contains(t, got[i], w)
			}
		})
	}
	got := Warnings(filepath.Join(t.TempDir(), "missing.toml"), hosts)
	require.Len(t, got, 1)
	require.Contains(t, got[0], "not found")
}
