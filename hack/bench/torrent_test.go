package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseAria2Int(t *testing.T) {
	v, err := parseAria2Int("1073741824")
	require.NoError(t, err)
	require.Equal(t, int64(1<<30), v)
	v, err = parseAria2Int("0")
	require.NoError(t, err)
	require.Zero(t, v)
	for _, bad := range []string{"", "-1", "1.5", "12k", " 1"} {
		_, err := parseAria2Int(bad)
		require.Error(t, err, bad)
	}
}

func TestParseTellActive(t *testing.T) {
	// An answer as aria2 1.36 sends it: every number a decimal string.
	sts, err := parseTellActive([]byte(`{"id":"bench","jsonrpc":"2.0","result":[{"completedLength":"134217728","infoHash":"c0ffee","seeder":"true","totalLength":"134217728","uploadLength":"209715200"}]}`))
	require.NoError(t, err)
	require.Equal(t, []aria2Status{{InfoHash: "c0ffee", Seeder: "true", UploadLength: "209715200", CompletedLength: "134217728", TotalLength: "134217728"}}, sts)
	up, err := parseAria2Int(sts[0].UploadLength)
	require.NoError(t, err)
	require.Equal(t, int64(200<<20), up)

	sts, err = parseTellActive([]byte(`{"id":"bench","jsonrpc":"2.0","result":[]}`))
	require.NoError(t, err)
	require.Empty(t, sts)

	_, err = parseTellActive([]byte(`{"id":"bench","jsonrpc":"2.0","error":{"code":1,"message":"Unauthorized"}}`))
	require.ErrorContains(t, err, "Unauthorized")
	_, err = parseTellActive([]byte(`<html>`))
	require.Error(t, err)
}

func TestAnnounceResponse(t *testing.T) {
	got := announceResponse([]string{"127.0.0.1:6881", "[::1]:6882", "bogus", "10.0.0.2:513"}, 5)
	want := "d8:intervali5e12:min intervali5e5:peers12:" + "\x7f\x00\x00\x01\x1a\xe1" + "\x0a\x00\x00\x02\x02\x01" + "e"
	require.Equal(t, want, string(got))
	require.Equal(t, "d8:intervali5e12:min intervali5e5:peers0:e", string(announceResponse(nil, 5)))
}

// TestMiniTracker: each announce gets the others that announced, not
// itself; a stopped peer is forgotten.
func TestMiniTracker(t *testing.T) {
	tr := &miniTracker{}
	srv := httptest.NewServer(http.HandlerFunc(tr.announce))
	defer srv.Close()
	get := func(query string) string {
		resp, err := http.Get(srv.URL + "/announce?" + query)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return string(b)
	}
	tr.add("127.0.0.1:6881") // the seeder
	require.True(t, strings.HasSuffix(get("port=7000&event=started"), "5:peers6:\x7f\x00\x00\x01\x1a\xe1e"))
	require.True(t, strings.HasSuffix(get("port=7001&event=started"), "5:peers12:\x7f\x00\x00\x01\x1a\xe1\x7f\x00\x00\x01\x1b\x58e"))
	get("port=7000&event=stopped")
	require.True(t, strings.HasSuffix(get("port=7001"), "5:peers6:\x7f\x00\x00\x01\x1a\xe1e"))
	tr.reset()
	require.True(t, strings.HasSuffix(get("port=7001"), "5:peers0:e"))

	resp, err := http.Get(srv.URL + "/announce")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
}

func TestTorrentTables(t *testing.T) {
	const size = 1 << 30
	a := roundResult{
		done:    []time.Duration{20 * time.Second, 22 * time.Second, 24 * time.Second, -1},
		right:   3,
		upload:  size,
		oneCopy: 19 * time.Second,
		cpu:     []cpuRow{{"supernode", 4 * time.Second}},
	}
	b := roundResult{
		done:    []time.Duration{30 * time.Second, 40 * time.Second, 40 * time.Second, 50 * time.Second},
		right:   4,
		upload:  2 * size,
		oneCopy: -1,
		cpu:     []cpuRow{{"leechers", 8 * time.Second}},
	}
	ts := torrentTables(size, 50<<20, 4, a, b)
	require.Len(t, ts, 2)
	rows := map[string][]string{}
	for _, r := range ts[0].rows {
		rows[r[0]] = r[1:]
	}
	require.Equal(t, []string{"22.000s", "40.000s", "0.55x"}, rows["completion, median"])
	require.Equal(t, []string{"24.000s", "50.000s", "0.48x"}, rows["completion, max"])
	require.Equal(t, []string{"3/4", "4/4", ""}, rows["finished, sha256 right"])
	require.Equal(t, []string{"1024.0", "2048.0", "0.50x"}, rows["seeder upload (MiB)"])
	require.Equal(t, []string{"1.000", "2.000", ""}, rows["seeder upload (copies)"])
	require.Equal(t, []string{"19.000s", "-", ""}, rows["seeder had sent one copy's bytes by"])
	require.Contains(t, ts[0].title, "52.4 MB/s")
	require.Contains(t, ts[0].title, "one copy at the cap: 20.5s")
	// CPU per GiB delivered: 4 GiB in all.
	require.Equal(t, [][]string{
		{"A. Damselfly", "supernode", "4.00", "1.00"},
		{"B. BitTorrent", "leechers", "8.00", "2.00"},
	}, ts[1].rows)
	md := ts[0].markdown()
	require.Contains(t, md, "| completion, median | 22.000s | 40.000s | 0.55x |")

	// A round where nobody finished.
	none := roundResult{done: []time.Duration{-1}, oneCopy: -1}
	ts = torrentTables(size, 50<<20, 1, none, b)
	require.Equal(t, []string{"completion, median", "-", "40.000s", "-"}, ts[0].rows[0])
}

func TestFreePorts(t *testing.T) {
	for range 50 {
		ps, err := freePorts(2)
		require.NoError(t, err)
		require.Len(t, ps, 2)
		require.NotEqual(t, ps[0], ps[1])
	}
}
