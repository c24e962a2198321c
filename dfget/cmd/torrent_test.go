package cmd

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/schedapi"
)

// testMagnet names a tracker whose announce URL carries a passkey.
const testMagnet = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&dn=set&tr=https://tracker.test/s3cret/announce"

func TestParseTorrentArgs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		wantErr string
		file    string
	}{
		{"magnet", []string{"-u", testMagnet, "-o", "out"}, "", ""},
		{"magnet and file", []string{"-u", testMagnet, "-o", "out", "--bt-file", "set/b.iso"}, "", "set/b.iso"},
		{"torrent file url", []string{"-u", "torrent+https://files.test/set.torrent", "-o", "out", "--bt-file", "a b/c.iso"}, "", "a b/c.iso"},
		{"torrent over http", []string{"-u", "torrent+http://files.test:8080/set.torrent", "-o", "out"}, "", ""},
		{"file without a torrent", []string{"-u", "https://files.test/a.iso", "-o", "out", "--bt-file", "a.iso"}, "--bt-file is for a torrent URL", ""},
		{"file dot dot", []string{"-u", testMagnet, "-o", "out", "--bt-file", "../../etc/passwd"}, "relative path", ""},
		{"file absolute", []string{"-u", testMagnet, "-o", "out", "--bt-file", "/etc/passwd"}, "relative path", ""},
		{"magnet without info-hash", []string{"-u", "magnet:?dn=x", "-o", "out"}, "info-hash", ""},
		{"magnet bad info-hash", []string{"-u", "magnet:?xt=urn:btih:abc", "-o", "out"}, "info-hash", ""},
		{"torrent over ftp", []string{"-u", "torrent+ftp://files.test/x.torrent", "-o", "out"}, "scheme must be http or https", ""},
		{"filter on a torrent", []string{"-u", testMagnet, "-o", "out", "--filter", "sig"}, "--filter is for http(s) URLs", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			o, _, err := parseArgs(tt.args)
			if tt.wantErr != "" {
				require.ErrorIs(t, err, ErrUsage)
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.True(t, o.torrent())
			require.Equal(t, tt.file, o.btFile)
			require.False(t, o.notbs, "implied, not set: the help says so")
		})
	}
}

// torrentSupernode answers every registration with the task failed, as the
// supernode does for a torrent of several files registered without one,
// and records the registrations.
type torrentSupernode struct {
	addr string
	msg  string

	mu        sync.Mutex
	registers []schedapi.RegisterRequest
}

func newTorrentSupernode(t *testing.T, msg string) *torrentSupernode {
	t.Helper()
	s := &torrentSupernode{msg: msg}
	mux := http.NewServeMux()
	mux.HandleFunc(schedapi.RouteRegister, func(w http.ResponseWriter, r *http.Request) {
		var req schedapi.RegisterRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		id, err := req.TaskID()
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			_ = json.NewEncoder(w).Encode(schedapi.Error{Code: schedapi.CodeInvalid, Message: err.Error()})
			return
		}
		s.mu.Lock()
		s.registers = append(s.registers, req)
		s.mu.Unlock()
		_ = json.NewEncoder(w).Encode(schedapi.RegisterResponse{TaskInfo: schedapi.TaskInfo{
			TaskID: id.String(), State: schedapi.TaskFailed, Size: -1, PieceCount: -1, Error: s.msg,
		}})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) })
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	s.addr = strings.TrimPrefix(srv.URL, "http://")
	return s
}

func (s *torrentSupernode) snapshot() []schedapi.RegisterRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]schedapi.RegisterRequest(nil), s.registers...)
}

// A torrent the supernode fails fails dfget with the supernode's message
// as it is (the files of a multi-file torrent), and dfget never goes to the
// source: it has no BitTorrent client.
func TestTorrentFailureShownVerbatim(t *testing.T) {
	t.Parallel()
	const multi = `torrent "set" has 2 files, pick one with --bt-file: set/a.iso (1.0 GiB), set/b.iso (2.0 GiB)`
	tests := []struct {
		name string
		args []string
		file string
	}{
		{"magnet without a file", []string{"-u", testMagnet}, ""},
		{"magnet with a file", []string{"-u", testMagnet, "--bt-file", "set/b.iso"}, "set/b.iso"},
		{"torrent file url", []string{"-u", "torrent+https://files.test/set.torrent?passkey=k"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sn := newTorrentSupernode(t, multi)
			dir := t.TempDir()
			args := append([]string{"-o", filepath.Join(dir, "out"), "--node", sn.addr}, tt.args...)
			_, stderr, err := runDfget(t, t.Context(), args...)
			require.Error(t, err)
			require.NotErrorIs(t, err, ErrUsage)
			require.Contains(t, err.Error(), "task failed on the supernode: "+multi)
			require.Contains(t, err.Error(), "dfget has no BitTorrent client")
			require.NotContains(t, err.Error(), "\n", "one line")
			require.NotContains(t, stderr, "downloading from source")
			require.Empty(t, dirEntries(t, dir), "no output file, no leftovers")

			regs := sn.snapshot()
			require.NotEmpty(t, regs)
			require.Equal(t, tt.args[1], regs[0].URL, "the supernode gets the whole link")
			require.Equal(t, tt.file, regs[0].File)
		})
	}
}

// Without a supernode a torrent cannot be had at all: dfget says so, and
// why it does not go to the source.
func TestTorrentSupernodeUnreachable(t *testing.T) {
	t.Parallel()
	node := deadNode(t)
	dir := t.TempDir()
	_, stderr, err := runDfget(t, t.Context(), "-u", testMagnet, "-o", filepath.Join(dir, "out"), "--node", node,
		"--stall-timeout", "300ms")
	require.Error(t, err)
	require.Contains(t, err.Error(), "supernode "+node+" unreachable")
	require.Contains(t, err.Error(), "dfget has no BitTorrent client (the supernode's is the only one)")
	require.NotContains(t, err.Error(), "s3cret")
	require.NotContains(t, stderr, "downloading from source")
	require.Empty(t, dirEntries(t, dir))
}

func TestHelpNamesTorrents(t *testing.T) {
	t.Parallel()
	stdout, _, err := runDfget(t, t.Context(), "--help")
	require.NoError(t, err)
	require.Contains(t, stdout, "-bt-file PATH")
	require.Contains(t, stdout, "magnet")
	require.Contains(t, stdout, "no BitTorrent client")
}
