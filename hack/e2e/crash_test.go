package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/supernode/supernodetest"
)

// stoppableSupernode is a supernode in this process that a test stops on
// purpose, with its data directory known.
type stoppableSupernode struct {
	supernode
	dataDir string
	stop    func()
}

func startStoppableSupernode(t *testing.T, extraArgs ...string) *stoppableSupernode {
	t.Helper()
	sn := supernodetest.Start(t, "e2e-admin-token", extraArgs...)
	return &stoppableSupernode{supernode: supernode{addr: sn.Addr, token: sn.Token}, dataDir: sn.DataDir, stop: sn.Stop}
}

// piecesHeldBy returns how many pieces the supernode says the peer at addr
// holds, over all tasks.
func piecesHeldBy(t *testing.T, sn *supernode, addr string) int {
	t.Helper()
	n := 0
	for _, task := range sn.tasks(t) {
		for _, p := range task.Peers {
			if p.Addr == addr {
				n += p.Pieces
			}
		}
	}
	return n
}

// hiddenDirs returns dfget's hidden data directories beside out.
func hiddenDirs(t *testing.T, out string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(filepath.Dir(out), "."+filepath.Base(out)+".dfget-*"))
	require.NoError(t, err)
	return m
}

// corruptIngests overwrites every ingest data file under root with bytes
// that match nothing, keeping the length, and returns how many it found
// with at least one byte.
func corruptIngests(t *testing.T, root string) int {
	t.Helper()
	n := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || d.Name() != "data" || !strings.Contains(p, string(filepath.Separator)+"ingest"+string(filepath.Separator)) {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if fi.Size() == 0 {
			return nil
		}
		n++
		return os.WriteFile(p, bytes.Repeat([]byte{0xEE}, int(fi.Size())), 0o644)
	})
	require.NoError(t, err)
	return n
}

// ingestBytes sums the sizes of the ingest data files under root.
func ingestBytes(root string) int64 {
	var total int64
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != "data" {
			return nil
		}
		if fi, err := d.Info(); err == nil && strings.Contains(p, "ingest") {
			total += fi.Size()
		}
		return nil
	})
	return total
}

// Every peer a download depends on is SIGKILLed and the supernode is
// stopped with the CDN's copy unfinished: a dfget that may go to the source
// does and finishes with the right bytes; one with --notbs fails with one
// clear line and leaves neither a file nor its hidden data directory.
func TestAllPeersDie(t *testing.T) {
	skipShort(t)
	t.Parallel()
	const size = 20 * mib
	o := newOrigin(t, size, 8*mib) // the CDN needs 2.5s for one copy
	sn := startStoppableSupernode(t, "--config", writeConfig(t, fastExpiry))
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	url := o.url("all-die")

	var victims []*dfget
	var victimAddrs []string
	for i := range 2 {
		addr := closedAddr(t)
		victimAddrs = append(victimAddrs, addr)
		victims = append(victims, startDfget(t, ctx, url, filepath.Join(dir, fmt.Sprintf("victim-%d", i)),
			"--node", sn.addr, "--notbs", "--peer-listen", addr))
	}
	bts, notbs := closedAddr(t), closedAddr(t)
	survivor := startDfget(t, ctx, url, filepath.Join(dir, "survivor"),
		"--node", sn.addr, "--stall-timeout", "2s", "--peer-listen", bts)
	strict := startDfget(t, ctx, url, filepath.Join(dir, "strict"),
		"--node", sn.addr, "--stall-timeout", "2s", "--notbs", "--peer-listen", notbs)

	// Everyone holds some pieces, and the CDN does not hold them all yet.
	require.Eventually(t, func() bool {
		for _, a := range append([]string{bts, notbs}, victimAddrs...) {
			if piecesHeldBy(t, &sn.supernode, a) < 1 {
				return false
			}
		}
		return true
	}, time.Minute, 10*time.Millisecond, "peers never held pieces")
	tasks := sn.tasks(t)
	require.Len(t, tasks, 1)
	require.Equal(t, "running", tasks[0].State, "the CDN must not have finished, or the test proves nothing")

	for _, v := range victims {
		require.NoError(t, v.cmd.Process.Kill())
	}
	sn.stop()
	for _, v := range victims {
		require.Error(t, v.wait(t, 10*time.Second))
	}

	require.NoError(t, survivor.wait(t, time.Minute), survivor.stderr.String())
	require.Equal(t, o.sum, fileSHA256(t, survivor.out))
	require.Contains(t, survivor.stderr.String(), "downloading from source")

	err := strict.wait(t, time.Minute)
	require.Error(t, err, "--notbs must fail when every peer and the supernode are gone")
	// Notices said the supernode went away as it happened; the error is
	// the last line, one line.
	stderr := strings.TrimSpace(strict.stderr.String())
	require.Contains(t, stderr, "dfget: supernode "+sn.addr+" unreachable")
	msg := lastLine(stderr)
	require.True(t, strings.HasPrefix(msg, "dfget: "), msg)
	require.Contains(t, msg, "--notbs")
	require.Contains(t, msg, sn.addr, "the error names the supernode")
	require.NoFileExists(t, strict.out)
	require.Empty(t, hiddenDirs(t, strict.out), "the hidden data dir goes with a clean failure")
}

// The supernode's data directory is wiped (blobs, ingests, metadata) while
// it runs and holds the task as succeeded: the next downloads of the same
// URL and of the same digest, P2P only, still get the right bytes, because
// the CDN notices its content is gone and fetches it again.
func TestCDNFilesWiped(t *testing.T) {
	skipShort(t)
	t.Parallel()
	const size = 12*mib + 5
	o := newOrigin(t, size, 0)
	sn := startStoppableSupernode(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	url := o.url("wiped")

	first := startDfget(t, ctx, url, filepath.Join(dir, "first"), "--node", sn.addr, "--notbs")
	require.NoError(t, first.wait(t, time.Minute), first.stderr.String())
	require.Equal(t, o.sum, fileSHA256(t, first.out))
	served := o.served.Load()

	entries, err := os.ReadDir(sn.dataDir)
	require.NoError(t, err)
	require.NotEmpty(t, entries)
	for _, e := range entries {
		require.NoError(t, os.RemoveAll(filepath.Join(sn.dataDir, e.Name())))
	}

	for i, args := range [][]string{
		{"--node", sn.addr, "--notbs", "--stall-timeout", "20s"},
		{"--node", sn.addr, "--notbs", "--stall-timeout", "20s", "--digest", "sha256:" + o.sum},
	} {
		d := startDfget(t, ctx, url, filepath.Join(dir, fmt.Sprintf("again-%d", i)), args...)
		require.NoError(t, d.wait(t, time.Minute), "download %d after the wipe:\n%s", i, d.stderr.String())
		require.Equal(t, o.sum, fileSHA256(t, d.out), "download %d", i)
	}
	require.GreaterOrEqual(t, o.served.Load(), served+size, "the CDN fetched the content again")
	require.FileExists(t, filepath.Join(sn.dataDir, "content", "blobs", "sha256", o.sum), "the CDN cached the content again")
}

// dfget SIGKILLed mid-download: no file at the output path, ever. The next
// dfget to the same path (the same --data-dir too, in one case) finishes
// with the right bytes although the leftover ingest was corrupted, and
// removes the dead dfget's hidden directory.
func TestDfgetKilledMidDownload(t *testing.T) {
	skipShort(t)
	t.Parallel()
	const size = 20 * mib
	o := newOrigin(t, size, 6*mib)
	sn := startSupernode(t, "--config", writeConfig(t, fastExpiry))

	tests := []struct {
		name    string
		dataDir bool
	}{
		{"hidden data dir", false},
		{"--data-dir", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			dir := t.TempDir()
			out := filepath.Join(dir, "file.bin")
			url := o.url("killed-" + strings.ReplaceAll(tt.name, " ", "-"))
			var extra []string
			ingestRoot := dir
			if tt.dataDir {
				ingestRoot = filepath.Join(t.TempDir(), "data")
				extra = []string{"--data-dir", ingestRoot}
			}
			victimAddr := closedAddr(t)
			victim := startDfget(t, ctx, url, out,
				append([]string{"--node", sn.addr, "--notbs", "--peer-listen", victimAddr}, extra...)...)
			require.Eventually(t, func() bool { return piecesHeldBy(t, sn, victimAddr) >= 2 },
				time.Minute, 10*time.Millisecond, "victim never held 2 pieces")
			require.NoError(t, victim.cmd.Process.Kill())
			require.Error(t, victim.wait(t, 10*time.Second))

			require.NoFileExists(t, out, "a killed dfget leaves no output file")
			if !tt.dataDir {
				require.Len(t, hiddenDirs(t, out), 1, "the killed dfget's hidden dir is left behind")
			}
			require.Positive(t, corruptIngests(t, ingestRoot), "no leftover ingest to corrupt")

			again := startDfget(t, ctx, url, out, append([]string{"--node", sn.addr, "--notbs"}, extra...)...)
			require.NoError(t, again.wait(t, time.Minute), again.stderr.String())
			require.Equal(t, o.sum, fileSHA256(t, out))
			require.Empty(t, hiddenDirs(t, out), "leftovers of the dead dfget are removed")
			if tt.dataDir {
				require.Zero(t, ingestBytes(ingestRoot), "no ingest survives in --data-dir")
			}
		})
	}
}

// healthy reports whether a dfdaemon answers /healthz with 200.
func healthy(addr string) bool {
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
