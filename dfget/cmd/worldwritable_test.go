package cmd

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A world-writable --data-dir is refused with one line naming the fix,
// before anything is fetched or written.
func TestWorldWritableDataDirRefused(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "data")
	require.NoError(t, os.Mkdir(dir, 0o700))
	require.NoError(t, os.Chmod(dir, 0o777))
	// Without the check it would run until the context ends.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	out := filepath.Join(t.TempDir(), "f")
	_, _, err := runDfget(t, ctx, "-u", "http://127.0.0.1:1/f", "-o", out, "--data-dir", dir, "--node", deadNode(t))
	require.EqualError(t, err, "data dir "+dir+" is world-writable (mode 0777): fix with chmod o-w "+dir)
	entries, rerr := os.ReadDir(dir)
	require.NoError(t, rerr)
	require.Empty(t, entries, "nothing written")
}
