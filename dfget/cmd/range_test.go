package cmd

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/supernode/supernodetest"
)

// runDfgetCluster runs dfget against a real supernode's cluster.
func runDfgetCluster(t *testing.T, sn string, args ...string) (string, error) {
	t.Helper()
	tok := filepath.Join(t.TempDir(), "cluster-token")
	require.NoError(t, os.WriteFile(tok, []byte(supernodetest.ClusterToken+"\n"), 0o600))
	var stdout, stderr syncBuffer
	base := []string{"--peer-listen", "127.0.0.1:0", "--advertise-ip", "127.0.0.1",
		"--source-allow", "127.0.0.1/32", "--peer-allow", "127.0.0.1/32",
		"--cluster-token-file", tok, "--node", sn}
	err := Run(t.Context(), append(base, args...), &stdout, &stderr, withEnv(noEnv))
	return stderr.String(), err
}

// --range writes exactly the bytes asked for, through a real supernode
// and from the source when there is none; FILE is the only file left.
func TestRange(t *testing.T) {
	t.Parallel()
	data := make([]byte, 9<<20+777)
	_, err := rand.Read(data)
	require.NoError(t, err)
	size := int64(len(data))
	origin := newOrigin(t, data)
	sn := supernodetest.Start(t, "dfget-range-test").Addr

	tests := []struct {
		name       string
		rng        string
		start, end int64 // inclusive
	}{
		{"closed", "1000000-5999999", 1_000_000, 5_999_999},
		{"with unit", "bytes=0-1", 0, 1},
		{"open", "9000000-", 9_000_000, size - 1},
		{"suffix (a footer)", "-51", size - 51, size - 1},
		{"end past the end", fmt.Sprintf("%d-%d", size-10, size+10), size - 10, size - 1},
		{"the whole content", "0-", 0, size - 1},
	}
	for _, node := range []struct{ name, addr string }{{"supernode", sn}, {"source", deadNode(t)}} {
		for _, tt := range tests {
			t.Run(node.name+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				dir := t.TempDir()
				out := filepath.Join(dir, "out.bin")
				stderr, err := runDfgetCluster(t, node.addr, "-u", origin.URL+"/file", "-o", out,
					"--digest", digest.FromBytes(data).String(), "--range", tt.rng)
				require.NoError(t, err, stderr)
				got, err := os.ReadFile(out)
				require.NoError(t, err)
				require.Equal(t, data[tt.start:tt.end+1], got)
				require.Contains(t, stderr, fmt.Sprintf("bytes %d-%d/%d written", tt.start, tt.end, size))
				require.Equal(t, []string{"out.bin"}, dirEntries(t, dir))
				fi, err := os.Stat(out)
				require.NoError(t, err)
				require.Equal(t, os.FileMode(0o644), fi.Mode().Perm())
			})
		}
	}

	t.Run("not satisfiable", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		out := filepath.Join(dir, "out.bin")
		stderr, err := runDfgetCluster(t, sn, "-u", origin.URL+"/file", "-o", out, "--range", fmt.Sprintf("%d-", size))
		require.ErrorContains(t, err, "range not satisfiable", stderr)
		require.Empty(t, dirEntries(t, dir), "no output, no temporary file")
	})
}
