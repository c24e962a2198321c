//go:build unix

package cmd

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
)

// Hidden data directories of dead dfgets beside the output are removed by
// the next dfget in that directory, whatever output they were for; a living
// dfget's directory (of this output or another) and unrelated files are
// not touched.
func TestStaleDataDirsRemoved(t *testing.T) {
	t.Parallel()
	parent := t.TempDir()
	out := filepath.Join(parent, "file.bin")
	log := zap.NewNop()

	live, releaseLive, err := newDataDir(out, log)
	require.NoError(t, err)
	require.FileExists(t, filepath.Join(live, lockName))

	// A dead dfget: its lock file exists but nobody holds the lock.
	dead := filepath.Join(parent, dataDirPrefix(out)+"dead")
	require.NoError(t, os.MkdirAll(filepath.Join(dead, "ingest", "x"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dead, "ingest", "x", "data"), []byte("unverified"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dead, lockName), nil, 0o644))
	// No lock file: young ones may be starting right now, old ones are dead.
	young := filepath.Join(parent, dataDirPrefix(out)+"young")
	require.NoError(t, os.Mkdir(young, 0o755))
	old := filepath.Join(parent, dataDirPrefix(out)+"old")
	require.NoError(t, os.Mkdir(old, 0o755))
	long := time.Now().Add(-2 * unlockedGrace)
	require.NoError(t, os.Chtimes(old, long, long))
	// Another output's: a dead dfget's and a living one's; unrelated files.
	other := filepath.Join(parent, dataDirPrefix(filepath.Join(parent, "other"))+"dead")
	require.NoError(t, os.Mkdir(other, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(other, lockName), nil, 0o644))
	otherLive, releaseOtherLive, err := newDataDir(filepath.Join(parent, "other2"), log)
	require.NoError(t, err)
	defer releaseOtherLive()
	unrelated := filepath.Join(parent, ".config.d")
	require.NoError(t, os.Mkdir(unrelated, 0o755))
	require.NoError(t, os.WriteFile(out, []byte("previous download"), 0o644))

	second, releaseSecond, err := newDataDir(out, log)
	require.NoError(t, err)
	require.NoDirExists(t, dead)
	require.NoDirExists(t, old)
	require.DirExists(t, young)
	require.DirExists(t, live, "a running dfget's directory stays")
	require.NoDirExists(t, other, "a dead dfget's directory for another output is removed too")
	require.DirExists(t, otherLive, "a running dfget's directory for another output stays")
	require.DirExists(t, unrelated)
	require.FileExists(t, out)

	releaseSecond()
	require.NoDirExists(t, second)
	releaseLive()
	require.NoDirExists(t, live)
}
