package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/httpx"
)

func TestRandomRanges(t *testing.T) {
	t.Parallel()
	const size, length = 64 * mib, mib
	rgs := randomRanges(42, size, length, 100)
	require.Len(t, rgs, 100)
	require.Equal(t, rgs, randomRanges(42, size, length, 100), "a seed gives the same ranges")
	require.NotEqual(t, rgs, randomRanges(43, size, length, 100))
	starts := map[int64]bool{}
	for _, r := range rgs {
		require.Equal(t, int64(length), r.Length)
		require.GreaterOrEqual(t, r.Start, int64(0))
		require.LessOrEqual(t, r.Start+r.Length, int64(size), "inside the blob")
		starts[r.Start] = true
	}
	require.Greater(t, len(starts), 90, "spread over the blob")
	// A blob of exactly one range has one place for it.
	for _, r := range randomRanges(1, length, length, 5) {
		require.Equal(t, httpx.Range{Start: 0, Length: length}, r)
	}
}

func TestSplitRanges(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		size int64
		k    int
		want []httpx.Range
	}{
		{"even", 256, 4, []httpx.Range{{Start: 0, Length: 64}, {Start: 64, Length: 64}, {Start: 128, Length: 64}, {Start: 192, Length: 64}}},
		{"remainder to the first", 10, 4, []httpx.Range{{Start: 0, Length: 3}, {Start: 3, Length: 3}, {Start: 6, Length: 2}, {Start: 8, Length: 2}}},
		{"fewer bytes than parts", 2, 4, []httpx.Range{{Start: 0, Length: 1}, {Start: 1, Length: 1}}},
		{"one part", 7, 1, []httpx.Range{{Start: 0, Length: 7}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tt.want, splitRanges(tt.size, tt.k))
		})
	}
}

func TestScenarioOffset(t *testing.T) {
	t.Parallel()
	require.Equal(t, int64(200*mib), scenarioOffset(256))
	require.Equal(t, int64(50*mib), scenarioOffset(64))
	for _, s := range []int{1, 2, 3, 5, 16, 100, 1000} {
		require.LessOrEqual(t, scenarioOffset(s)+mib, int64(s)*mib, "a 1 MiB range at the offset fits %d MiB", s)
	}
}

// waitSettled returns once the counter has been still for the quiet time,
// and gives up at the limit while it keeps growing.
func TestWaitSettled(t *testing.T) {
	t.Parallel()
	t.Run("settles after the growth stops", func(t *testing.T) {
		t.Parallel()
		var n atomic.Int64
		stop := time.Now().Add(150 * time.Millisecond)
		sent := func() int64 {
			if time.Now().Before(stop) {
				return n.Add(1)
			}
			return n.Load()
		}
		took, ok := waitSettled(t.Context(), sent, 10*time.Millisecond, 100*time.Millisecond, 5*time.Second)
		require.True(t, ok)
		require.GreaterOrEqual(t, took, 100*time.Millisecond, "the last growth was at least 150ms - a poll in")
		require.Less(t, took, 2*time.Second)
	})
	t.Run("gives up while it grows", func(t *testing.T) {
		t.Parallel()
		var n atomic.Int64
		took, ok := waitSettled(t.Context(), func() int64 { return n.Add(1) }, 10*time.Millisecond, 100*time.Millisecond, 300*time.Millisecond)
		require.False(t, ok)
		require.GreaterOrEqual(t, took, 300*time.Millisecond)
	})
	t.Run("still from the start", func(t *testing.T) {
		t.Parallel()
		took, ok := waitSettled(t.Context(), func() int64 { return 7 }, 10*time.Millisecond, 50*time.Millisecond, 5*time.Second)
		require.True(t, ok)
		require.Zero(t, took, "nothing grew after the reads")
	})
}

// readRange takes only a 206 of the range asked with the blob's bytes.
func TestReadRange(t *testing.T) {
	t.Parallel()
	blob := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	rg := httpx.Range{Start: 1000, Length: 5000}
	want := blob[rg.Start : rg.Start+rg.Length]
	wrong := bytes.Clone(blob)
	wrong[3000] ^= 1
	tests := []struct {
		name    string
		handler http.HandlerFunc
		err     string
	}{
		{"right", func(w http.ResponseWriter, r *http.Request) {
			http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
		}, ""},
		{"range ignored", func(w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write(blob)
		}, "want 206"},
		{"wrong bytes", func(w http.ResponseWriter, r *http.Request) {
			http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(wrong))
		}, "not the blob's bytes"},
		{"another range", func(w http.ResponseWriter, r *http.Request) {
			r.Header.Set("Range", httpx.FormatRange(0, rg.Length))
			http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
		}, "content-range"},
		{"short", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Range", rg.ContentRange(int64(len(blob))))
			w.WriteHeader(http.StatusPartialContent)
			_, _ = w.Write(want[:100])
		}, "100 bytes, want 5000"},
		{"long", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Range", rg.ContentRange(int64(len(blob))))
			w.WriteHeader(http.StatusPartialContent)
			_, _ = w.Write(blob[rg.Start : rg.Start+rg.Length+1])
		}, "longer than the range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(tt.handler)
			t.Cleanup(srv.Close)
			r := readRange(t.Context(), srv.Client(), srv.URL, rg, make([]byte, rg.Length), want, 10*time.Second)
			if tt.err == "" {
				require.NoError(t, r.err)
				require.True(t, r.right())
				require.Positive(t, r.first)
				require.GreaterOrEqual(t, r.last, r.first)
				return
			}
			require.ErrorContains(t, r.err, tt.err)
			require.False(t, r.right())
		})
	}
}

func TestTable(t *testing.T) {
	t.Parallel()
	tb := &table{title: "T", header: []string{"", "direct", "dfdaemon"}}
	tb.add("first byte", "0.05s", "1.20s")
	tb.add("a|b", "x")
	var text strings.Builder
	tb.writeText(&text)
	require.Equal(t, "T\n              direct  dfdaemon  \n  first byte  0.05s   1.20s     \n  a|b         x       \n", text.String())
	require.Equal(t, "**T**\n\n|  | direct | dfdaemon |\n| --- | --- | --- |\n| first byte | 0.05s | 1.20s |\n| a\\|b | x |  |\n", tb.markdown())
}
