package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/schedclient"
	"github.com/damselfly/damselfly/pkg/taskid"
	"github.com/damselfly/damselfly/supernode/supernodetest"
)

var (
	supernodeBuild    sync.Once
	supernodeBuildErr error
)

// supernodeBinary builds the supernode once into binDir, for tests that
// kill it (SIGKILL) and start it again.
func supernodeBinary(t *testing.T) string {
	t.Helper()
	skipShort(t)
	supernodeBuild.Do(func() {
		cmd := exec.Command("go", "build", "-o", binDir, "github.com/damselfly/damselfly/supernode")
		out, err := cmd.CombinedOutput()
		if err != nil {
			supernodeBuildErr = fmt.Errorf("build supernode: %w\n%s", err, out)
		}
	})
	require.NoError(t, supernodeBuildErr)
	return filepath.Join(binDir, "supernode")
}

// snProc is a supernode running as a subprocess on a fixed address and data
// directory, so it can be killed and started again in the same place.
type snProc struct {
	*supernode
	dataDir string
	args    []string
	cmd     *exec.Cmd
	stderr  *syncBuffer
	done    chan error
}

func newSupernodeProc(t *testing.T, extraArgs ...string) *snProc {
	t.Helper()
	p := &snProc{
		supernode: &supernode{addr: closedAddr(t), token: "e2e-admin-token"},
		dataDir:   filepath.Join(t.TempDir(), "data"),
	}
	p.args = append([]string{
		"--listen", p.addr,
		"--data-dir", p.dataDir,
		"--admin-token", p.token,
		"--log-level", "warn",
		"--source-allow", "127.0.0.1/32",
	}, extraArgs...)
	p.start(t)
	return p
}

// start runs the supernode and waits until it answers /healthz.
func (p *snProc) start(t *testing.T) {
	t.Helper()
	cmd := exec.Command(supernodeBinary(t), p.args...)
	cmd.Env = memberEnv()
	p.stderr = &syncBuffer{}
	cmd.Stdout, cmd.Stderr = p.stderr, p.stderr
	require.NoError(t, cmd.Start())
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	p.cmd, p.done = cmd, done
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		done <- nil
	})
	require.Eventually(t, func() bool {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("supernode exited: %v\n%s", err, p.stderr.String())
		default:
		}
		resp, err := http.Get("http://" + p.addr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 30*time.Second, 20*time.Millisecond, "supernode did not answer /healthz")
}

// kill ends the supernode with SIGKILL: no shutdown, no goodbye.
func (p *snProc) kill(t *testing.T) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGKILL))
	select {
	case err := <-p.done:
		p.done <- err
	case <-time.After(10 * time.Second):
		t.Fatal("supernode did not die within 10s")
	}
}

// peerPieces returns, per peer address, how many pieces the supernode
// counts for the peers of the task; ok is false when it has no such task.
func peerPieces(t *testing.T, sn *supernode, taskID taskid.ID) (map[string]int, bool) {
	t.Helper()
	var task adminTask
	if sn.adminGet(t, "/api/v1/tasks/"+taskID.String(), &task) != http.StatusOK {
		return nil, false
	}
	out := map[string]int{}
	for _, p := range task.Peers {
		if p.Addr != "" {
			out[p.Addr] = p.Pieces
		}
	}
	return out, true
}

// The supernode is killed (SIGKILL) while peers hold part of a task and
// started again a second later on the same address and data directory.
// Every dfget (--notbs: no going to the source) finishes with the right
// bytes; each peer comes back with the pieces it had verified, and the
// origin sends the file at most about twice (once per CDN life).
func TestSupernodeRestartMidTask(t *testing.T) {
	skipShort(t)
	t.Parallel()
	const peers, size = 4, 32 * mib
	o := newOrigin(t, size, 8*mib) // four seconds for one copy: peers cannot finish before the kill
	sn := newSupernodeProc(t)
	url := o.url("restart.bin")
	id, err := taskid.ForURL(url, nil, "")
	require.NoError(t, err)

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	var ds []*dfget
	addrs := make([]string, peers)
	for i := range peers {
		addrs[i] = closedAddr(t)
		ds = append(ds, startDfget(t, ctx, url, filepath.Join(dir, fmt.Sprintf("out-%d", i)),
			"--node", sn.addr, "--notbs", "--peer-listen", addrs[i]))
	}

	// Kill the supernode once every peer holds at least two pieces.
	var before map[string]int
	require.Eventually(t, func() bool {
		held, ok := peerPieces(t, sn.supernode, id)
		if !ok {
			return false
		}
		for _, a := range addrs {
			if held[a] < 2 {
				return false
			}
		}
		before = held
		return true
	}, time.Minute, 20*time.Millisecond, "peers never held two pieces each")
	sn.kill(t)
	t.Logf("supernode killed; peers held %v pieces; origin served %d bytes", before, o.served.Load())
	for i, d := range ds {
		select {
		case err := <-d.done:
			t.Fatalf("peer %d ended while the task was half done (%v); stderr:\n%s", i, err, d.stderr.String())
		default:
		}
	}
	// The outage itself: peers find nobody at the supernode's address.
	time.Sleep(time.Second)
	sn.start(t)

	// Each peer registers again with what it holds: the restarted
	// supernode counts at least those pieces for it as soon as it knows
	// the peer (the restarted CDN cannot have served them yet at the
	// origin's pace).
	seen := map[string]bool{}
	require.Eventually(t, func() bool {
		held, ok := peerPieces(t, sn.supernode, id)
		if !ok {
			return false
		}
		for _, a := range addrs {
			n, ok := held[a]
			if !ok || seen[a] {
				continue
			}
			seen[a] = true
			require.GreaterOrEqual(t, n, before[a], "peer %s came back with fewer pieces than it held", a)
		}
		return len(seen) == peers
	}, time.Minute, 20*time.Millisecond, "peers did not register again")

	for i, d := range ds {
		require.NoError(t, d.wait(t, 3*time.Minute), "peer %d stderr:\n%s", i, d.stderr.String())
		require.Equal(t, o.sum, fileSHA256(t, d.out), "peer %d", i)
		require.NotContains(t, d.stderr.String(), "downloading from source", "peer %d went to the source", i)
	}
	requireNoRefetch(t, sn.supernode, id, peers, size, before)
	served := o.served.Load()
	t.Logf("origin served %d bytes for a %d-byte file (%.2fx)", served, size, float64(served)/float64(size))
	require.LessOrEqual(t, float64(served), 2.05*float64(size), "origin egress")
}

// Tasks are spread over several supernodes by rendezvous hashing of the task
// ID: each task lives on the supernode the HRW order of its ID names, and
// files are chosen so that every supernode owns one.
func TestSupernodesSpreadTasks(t *testing.T) {
	skipShort(t)
	t.Parallel()
	o := newOrigin(t, 1*mib+7, 0)
	sns := []*snProc{newSupernodeProc(t), newSupernodeProc(t), newSupernodeProc(t)}
	nodes := []string{sns[0].addr, sns[1].addr, sns[2].addr}
	sc, err := schedclient.New(nodes, schedclient.WithClusterKeys(supernodetest.Keys()))
	require.NoError(t, err)
	byBase := map[string]*snProc{}
	for _, s := range sns {
		byBase["http://"+s.addr] = s
	}

	// One file per supernode, found by the order every peer computes.
	owner := map[*snProc]string{} // supernode -> URL it owns
	for i := 0; i < 200 && len(owner) < len(sns); i++ {
		url := o.url(fmt.Sprintf("spread-%d", i))
		id, err := taskid.ForURL(url, nil, "")
		require.NoError(t, err)
		s := byBase[sc.Order(id)[0]]
		if _, ok := owner[s]; !ok {
			owner[s] = url
		}
	}
	require.Len(t, owner, len(sns), "200 task IDs did not cover three supernodes")

	dir := t.TempDir()
	i := 0
	for _, url := range owner {
		out := filepath.Join(dir, fmt.Sprintf("out-%d", i))
		i++
		d := startDfget(t, t.Context(), url, out, "--node", strings.Join(nodes, ","), "--notbs")
		require.NoError(t, d.wait(t, time.Minute), d.stderr.String())
		require.Equal(t, o.sum, fileSHA256(t, out))
	}
	for s, url := range owner {
		id, err := taskid.ForURL(url, nil, "")
		require.NoError(t, err)
		for _, other := range sns {
			var task adminTask
			status := other.adminGet(t, "/api/v1/tasks/"+id.String(), &task)
			if other == s {
				require.Equal(t, http.StatusOK, status, "task %s is not on its owner", id)
			} else {
				require.Equal(t, http.StatusNotFound, status, "task %s is on a supernode that does not own it", id)
			}
		}
	}
}

// Three supernodes; the one owning the task is killed (SIGKILL) while peers
// download. The peers move the task to the next supernode in the task's
// rendezvous order, carrying the pieces they hold, and every dfget
// (--notbs) finishes with the right bytes. No state is shared between the
// supernodes: the successor learns the task from the peers.
func TestSupernodeFailover(t *testing.T) {
	skipShort(t)
	t.Parallel()
	const peers, size = 4, 32 * mib
	o := newOrigin(t, size, 8*mib)
	sns := []*snProc{newSupernodeProc(t), newSupernodeProc(t), newSupernodeProc(t)}
	nodes := []string{sns[0].addr, sns[1].addr, sns[2].addr}
	sc, err := schedclient.New(nodes, schedclient.WithClusterKeys(supernodetest.Keys()))
	require.NoError(t, err)
	byBase := map[string]*snProc{}
	for _, s := range sns {
		byBase["http://"+s.addr] = s
	}
	url := o.url("failover.bin")
	id, err := taskid.ForURL(url, nil, "")
	require.NoError(t, err)
	order := sc.Order(id)
	owner, successor := byBase[order[0]], byBase[order[1]]

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	var ds []*dfget
	addrs := make([]string, peers)
	for i := range peers {
		addrs[i] = closedAddr(t)
		ds = append(ds, startDfget(t, ctx, url, filepath.Join(dir, fmt.Sprintf("out-%d", i)),
			"--node", strings.Join(nodes, ","), "--notbs", "--peer-listen", addrs[i]))
	}

	var before map[string]int
	require.Eventually(t, func() bool {
		held, ok := peerPieces(t, owner.supernode, id)
		if !ok {
			return false
		}
		for _, a := range addrs {
			if held[a] < 2 {
				return false
			}
		}
		before = held
		return true
	}, time.Minute, 20*time.Millisecond, "peers never held two pieces each on the owner")
	for _, s := range sns {
		if s != owner {
			_, ok := peerPieces(t, s.supernode, id)
			require.False(t, ok, "the task is only on its owner")
		}
	}
	owner.kill(t)
	t.Logf("owner killed; peers held %v pieces", before)

	seen := map[string]bool{}
	require.Eventually(t, func() bool {
		held, ok := peerPieces(t, successor.supernode, id)
		if !ok {
			return false
		}
		for _, a := range addrs {
			n, ok := held[a]
			if !ok || seen[a] {
				continue
			}
			seen[a] = true
			require.GreaterOrEqual(t, n, before[a], "peer %s moved with fewer pieces than it held", a)
		}
		return len(seen) == peers
	}, time.Minute, 20*time.Millisecond, "peers did not move to the next supernode")

	for i, d := range ds {
		require.NoError(t, d.wait(t, 3*time.Minute), "peer %d stderr:\n%s", i, d.stderr.String())
		require.Equal(t, o.sum, fileSHA256(t, d.out), "peer %d", i)
		require.NotContains(t, d.stderr.String(), "downloading from source", "peer %d went to the source", i)
	}
	requireNoRefetch(t, successor.supernode, id, peers, size, before)
	for _, s := range sns {
		if s != owner && s != successor {
			_, ok := peerPieces(t, s.supernode, id)
			require.False(t, ok, "the task moved to the successor only")
		}
	}
	served := o.served.Load()
	t.Logf("origin served %d bytes for a %d-byte file (%.2fx)", served, size, float64(served)/float64(size))
	require.LessOrEqual(t, float64(served), 2.05*float64(size), "origin egress")
}

// requireNoRefetch checks that, on the supernode that took over, peers
// fetched only the pieces they did not hold before: the bytes sent to them
// (by its CDN and by peers) leave out what they had.
func requireNoRefetch(t *testing.T, sn *supernode, id taskid.ID, peers, size int, before map[string]int) {
	t.Helper()
	var task adminTask
	require.Equal(t, http.StatusOK, sn.adminGet(t, "/api/v1/tasks/"+id.String(), &task))
	require.Positive(t, task.PieceCount)
	pieceSize := (int64(size) + int64(task.PieceCount) - 1) / int64(task.PieceCount)
	held := 0
	for _, n := range before {
		held += n
	}
	sent := task.BytesFromCDN + task.BytesFromPeers
	t.Logf("after the switch: %d bytes sent to peers, which held %d pieces of %d bytes", sent, held, pieceSize)
	require.LessOrEqual(t, sent, int64(peers*size)-int64(held)*pieceSize, "peers fetched again pieces they held")
}
