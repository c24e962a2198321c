package blobcache_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/damselfly/damselfly/dfdaemon/blobcache"
	"github.com/damselfly/damselfly/pkg/content"
	"github.com/damselfly/damselfly/pkg/content/local"
	"github.com/damselfly/damselfly/pkg/peer"
	"github.com/damselfly/damselfly/pkg/peer/upload"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/schedclient"
	"github.com/damselfly/damselfly/supernode/supernodetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const adminToken = "blobcache-test-token"

// startSupernode runs a real supernode in-process on 127.0.0.1.
func startSupernode(t *testing.T) string {
	t.Helper()
	return supernodetest.Start(t, adminToken).Addr
}

// origin serves blobs at /blobs/<digest> and counts GETs per path.
type origin struct {
	*httptest.Server
	mu    sync.Mutex
	blobs map[string][]byte
	gets  map[string]int
	gate  chan struct{} // when set, bodies wait for it
}

func newOrigin(t *testing.T) *origin {
	o := &origin{blobs: map[string][]byte{}, gets: map[string]int{}}
	o.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o.mu.Lock()
		b, ok := o.blobs[r.URL.Path]
		if r.Method == http.MethodGet {
			o.gets[r.URL.Path]++
		}
		gate := o.gate
		o.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		if gate != nil && r.Method == http.MethodGet {
			// Answer at once, hold the body back.
			w.Header().Set("Content-Length", strconv.Itoa(len(b)))
			w.WriteHeader(http.StatusOK)
			http.NewResponseController(w).Flush() //nolint:errcheck // best effort
			select {
			case <-gate:
			case <-r.Context().Done():
				return
			}
			_, _ = w.Write(b)
			return
		}
		http.ServeContent(w, r, "", time.Time{}, strings.NewReader(string(b)))
	}))
	t.Cleanup(o.Close)
	return o
}

// add stores n random bytes and returns their digest and URL.
func (o *origin) add(t *testing.T, n int) (digest.Digest, string, []byte) {
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	d := digest.FromBytes(b)
	p := "/blobs/" + d.Encoded()
	o.mu.Lock()
	o.blobs[p] = b
	o.mu.Unlock()
	return d, o.URL + p, b
}

func (o *origin) getCount(d digest.Digest) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.gets["/blobs/"+d.Encoded()]
}

type node struct {
	cache  *blobcache.Cache
	store  *local.Store
	peerID string
}

// startNode runs an engine, its upload server and a cache on a fresh store.
func startNode(t *testing.T, snAddr string, cfg blobcache.Config) *node {
	t.Helper()
	store, err := local.New(t.TempDir())
	require.NoError(t, err)
	return startNodeOn(t, snAddr, store, cfg)
}

// startNodeOn is startNode on a given store.
func startNodeOn(t *testing.T, snAddr string, store *local.Store, cfg blobcache.Config) *node {
	t.Helper()
	return startNodeWith(t, snAddr, store, cfg, peer.Config{PollWait: 500 * time.Millisecond})
}

// startNodeWith is startNodeOn with an engine configuration.
func startNodeWith(t *testing.T, snAddr string, store *local.Store, cfg blobcache.Config, pcfg peer.Config) *node {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	sc, err := schedclient.New([]string{snAddr}, schedclient.WithClusterKeys(supernodetest.Keys()))
	require.NoError(t, err)
	self := schedapi.Peer{ID: "node-" + strings.ReplaceAll(t.Name(), "/", "-"), Addr: ln.Addr().String()}
	eng, err := peer.New(pcfg, store, sc, self)
	require.NoError(t, err)
	c, err := blobcache.New(cfg, store, eng)
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = upload.New(eng, supernodetest.Keys()).Run(ctx, ln) })
	wg.Go(func() { _ = eng.Run(ctx) })
	wg.Go(func() { _ = c.Run(ctx) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return &node{cache: c, store: store, peerID: self.ID}
}

// fetch reads the whole blob through the cache and releases it.
func (n *node) fetch(t *testing.T, d digest.Digest, url string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	r, err := n.cache.Open(ctx, peer.Request{URL: url, Digest: d, BackToSource: true}, 0, -1)
	require.NoError(t, err)
	defer r.Close()
	b, err := io.ReadAll(r)
	require.NoError(t, err)
	return b
}

func has(t *testing.T, s content.InfoProvider, d digest.Digest) bool {
	_, err := s.Info(t.Context(), d)
	if errors.Is(err, content.ErrNotFound) {
		return false
	}
	require.NoError(t, err)
	return true
}

// taskPeers lists the peers the supernode knows in task id.
func taskPeers(t *testing.T, snAddr, id string) []string {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+snAddr+"/api/v1/tasks/"+id, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+adminToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil
	}
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var task struct {
		Peers []struct {
			ID string `json:"id"`
		} `json:"peers"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&task))
	var ids []string
	for _, p := range task.Peers {
		ids = append(ids, p.ID)
	}
	return ids
}

const mib = 1 << 20

func TestEvictsLeastRecentlyUsedUnderQuota(t *testing.T) {
	t.Parallel()
	sn := startSupernode(t)
	o := newOrigin(t)
	n := startNode(t, sn, blobcache.Config{Quota: 3 * mib, LowWater: 1, CheckInterval: time.Hour})

	var ds []digest.Digest
	var urls []string
	for range 4 {
		d, u, want := o.add(t, mib)
		require.Equal(t, want, n.fetch(t, d, u))
		ds, urls = append(ds, d), append(urls, u)
		if len(ds) == 1 {
			require.Eventually(t, func() bool {
				return len(taskPeers(t, sn, ds[0].String())) > 0
			}, 10*time.Second, 20*time.Millisecond, "node offers the blob to other peers")
		}
		if len(ds) == 2 {
			// Use the first again: the second is now the least recently used.
			require.Len(t, n.fetch(t, ds[0], urls[0]), mib)
		}
		time.Sleep(20 * time.Millisecond) // distinct use times
	}
	n.cache.Check(t.Context())

	require.False(t, has(t, n.store, ds[1]), "least recently used blob evicted")
	for _, i := range []int{0, 2, 3} {
		require.True(t, has(t, n.store, ds[i]), "blob %d kept", i)
	}
	require.NotContains(t, taskPeers(t, sn, ds[1].String()), n.peerID, "evicted task left on the supernode")
	require.Contains(t, taskPeers(t, sn, ds[0].String()), n.peerID, "kept task still offered")
	require.NotContains(t, n.cache.Seeding(), ds[1].String())

	// An evicted blob comes back on demand.
	d, u := ds[1], urls[1]
	require.Len(t, n.fetch(t, d, u), mib)
	require.True(t, has(t, n.store, d))
}

func TestBlobInUseIsNotEvicted(t *testing.T) {
	t.Parallel()
	sn := startSupernode(t)
	o := newOrigin(t)
	n := startNode(t, sn, blobcache.Config{Quota: 2 * mib, LowWater: 1, CheckInterval: time.Hour})

	d0, u0, want0 := o.add(t, mib)
	lease, err := n.cache.Acquire(t.Context(), peer.Request{URL: u0, Digest: d0, BackToSource: true})
	require.NoError(t, err)
	_, err = lease.Wait(t.Context())
	require.NoError(t, err)
	time.Sleep(20 * time.Millisecond)

	d1, u1, _ := o.add(t, mib)
	n.fetch(t, d1, u1)
	time.Sleep(20 * time.Millisecond)
	d2, u2, _ := o.add(t, mib)
	n.fetch(t, d2, u2)
	n.cache.Check(t.Context())

	require.True(t, has(t, n.store, d0), "the oldest blob is leased: kept")
	require.False(t, has(t, n.store, d1), "the oldest free blob evicted instead")
	require.True(t, has(t, n.store, d2))

	// The lease still reads its content, then lets it go.
	r := lease.NewReader(0)
	got, err := io.ReadAll(r)
	require.NoError(t, err)
	require.NoError(t, r.Close())
	require.Equal(t, want0, got)
	lease.Release()
	lease.Release() // idempotent

	d3, u3, _ := o.add(t, mib)
	n.fetch(t, d3, u3)
	n.cache.Check(t.Context())
	// Releasing counts as a use: d2 is now the least recently used.
	require.True(t, has(t, n.store, d0), "released just now: kept")
	require.False(t, has(t, n.store, d2), "least recently used evicted")
	require.True(t, has(t, n.store, d3))
}

func TestQuotaEnforcedAfterCommitWithoutAsking(t *testing.T) {
	t.Parallel()
	sn := startSupernode(t)
	o := newOrigin(t)
	n := startNode(t, sn, blobcache.Config{Quota: mib + mib/2, LowWater: 1, CheckInterval: time.Hour})
	d0, u0, _ := o.add(t, mib)
	n.fetch(t, d0, u0)
	time.Sleep(20 * time.Millisecond)
	d1, u1, _ := o.add(t, mib)
	n.fetch(t, d1, u1)
	// No Check call: the commit itself triggers the check.
	require.Eventually(t, func() bool { return !has(t, n.store, d0) }, 10*time.Second, 20*time.Millisecond)
	require.True(t, has(t, n.store, d1))
}

func TestSeedExpiresButContentStays(t *testing.T) {
	t.Parallel()
	sn := startSupernode(t)
	o := newOrigin(t)
	n := startNode(t, sn, blobcache.Config{SeedTTL: 300 * time.Millisecond, CheckInterval: 50 * time.Millisecond})
	d, u, want := o.add(t, 256<<10)
	require.Equal(t, want, n.fetch(t, d, u))
	require.Eventually(t, func() bool { return len(n.cache.Seeding()) == 0 }, 10*time.Second, 20*time.Millisecond)
	require.Eventually(t, func() bool {
		for _, p := range taskPeers(t, sn, d.String()) {
			if p == n.peerID {
				return false
			}
		}
		return true
	}, 10*time.Second, 20*time.Millisecond, "task left on the supernode")
	require.True(t, has(t, n.store, d), "content stays")

	// Used again: served from the store, offered again.
	gets := o.getCount(d)
	require.Equal(t, want, n.fetch(t, d, u))
	require.Equal(t, gets, o.getCount(d), "no new source fetch")
}

// TestPartialDownloadExpires: with the engine's prefetch off a range read
// leaves a partial download, never committed; once nobody has read it for
// SeedTTL it is dropped, its ingest with it.
func TestPartialDownloadExpires(t *testing.T) {
	t.Parallel()
	sn := startSupernode(t)
	o := newOrigin(t)
	store, err := local.New(t.TempDir())
	require.NoError(t, err)
	n := startNodeWith(t, sn, store, blobcache.Config{SeedTTL: 300 * time.Millisecond, CheckInterval: 50 * time.Millisecond},
		peer.Config{PollWait: 500 * time.Millisecond, Prefetch: peer.Prefetch{Off: true}})
	d, u, want := o.add(t, 10<<20)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	off := int64(5<<20 + 3)
	r, err := n.cache.Open(ctx, peer.Request{URL: u, Digest: d}, off, 100)
	require.NoError(t, err)
	b, err := io.ReadAll(r)
	require.NoError(t, err)
	require.NoError(t, r.Close())
	require.Equal(t, want[off:off+100], b)
	require.False(t, has(t, n.store, d), "only the range's piece was fetched: nothing committed")

	require.Eventually(t, func() bool { return len(n.cache.Seeding()) == 0 }, 10*time.Second, 20*time.Millisecond)
	require.Eventually(t, func() bool {
		st, err := n.store.ListStatuses(t.Context())
		return err == nil && len(st) == 0
	}, 10*time.Second, 20*time.Millisecond, "the partial ingest is dropped")
}

func TestMaxSeeds(t *testing.T) {
	t.Parallel()
	sn := startSupernode(t)
	o := newOrigin(t)
	n := startNode(t, sn, blobcache.Config{MaxSeeds: 2, CheckInterval: time.Hour})
	var ds []digest.Digest
	for range 3 {
		d, u, _ := o.add(t, 10_000)
		n.fetch(t, d, u)
		ds = append(ds, d)
		time.Sleep(20 * time.Millisecond)
	}
	n.cache.Check(t.Context())
	require.ElementsMatch(t, []string{ds[1].String(), ds[2].String()}, n.cache.Seeding(), "the oldest seed dropped")
	require.True(t, has(t, n.store, ds[0]), "its content stays")
}

func TestDownloadOutlivesTheClientAndIsShared(t *testing.T) {
	t.Parallel()
	sn := startSupernode(t)
	o := newOrigin(t)
	n := startNode(t, sn, blobcache.Config{})
	d, u, want := o.add(t, 2*mib)
	gate := make(chan struct{})
	o.mu.Lock()
	o.gate = gate
	o.mu.Unlock()

	// The first client hangs up before a byte arrives.
	ctx, cancel := context.WithCancel(t.Context())
	r, err := n.cache.Open(ctx, peer.Request{URL: u, Digest: d, BackToSource: true}, 0, -1)
	require.NoError(t, err)
	cancel()
	require.NoError(t, r.Close())

	// Others join the same download meanwhile.
	var wg sync.WaitGroup
	var ok atomic.Int32
	for range 3 {
		wg.Go(func() {
			r, err := n.cache.Open(t.Context(), peer.Request{URL: u, Digest: d, BackToSource: true}, mib, -1)
			if err != nil {
				t.Error(err)
				return
			}
			defer r.Close()
			b, err := io.ReadAll(r)
			if err != nil {
				t.Error(err)
				return
			}
			if string(b) == string(want[mib:]) {
				ok.Add(1)
			}
		})
	}
	time.Sleep(100 * time.Millisecond)
	close(gate)
	wg.Wait()
	require.EqualValues(t, 3, ok.Load())
	require.Equal(t, 1, o.getCount(d), "one source fetch for everyone")
	require.True(t, has(t, n.store, d))
}

func TestFailedDownloadIsRetried(t *testing.T) {
	t.Parallel()
	sn := startSupernode(t)
	o := newOrigin(t)
	n := startNode(t, sn, blobcache.Config{})
	b := make([]byte, 1000)
	d := digest.FromBytes(b)
	u := o.URL + "/blobs/" + d.Encoded()

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	r, err := n.cache.Open(ctx, peer.Request{URL: u, Digest: d, BackToSource: true}, 0, -1)
	if err == nil {
		_, err = io.ReadAll(r)
		r.Close()
	}
	require.Error(t, err, "the origin does not have it yet")
	require.Eventually(t, func() bool { return len(n.cache.Seeding()) == 0 }, 10*time.Second, 20*time.Millisecond)

	o.mu.Lock()
	o.blobs["/blobs/"+d.Encoded()] = b
	o.mu.Unlock()
	require.Eventually(t, func() bool {
		r, err := n.cache.Open(ctx, peer.Request{URL: u, Digest: d, BackToSource: true}, 0, -1)
		if err != nil {
			return false
		}
		defer r.Close()
		got, err := io.ReadAll(r)
		return err == nil && string(got) == string(b)
	}, 20*time.Second, 100*time.Millisecond, "a later request starts afresh")
}

func TestConfig(t *testing.T) {
	t.Parallel()
	c := blobcache.Config{}.ApplyDefaults()
	require.NoError(t, c.Validate())
	require.Equal(t, blobcache.DefaultQuota, c.Quota)
	err := blobcache.Config{Quota: -1, LowWater: 2, CheckInterval: -1, SeedTTL: -1, MaxSeeds: -1}.Validate()
	require.Error(t, err)
	for _, key := range []string{"cache.quota", "cache.lowWater", "cache.checkInterval", "cache.seedTTL", "cache.maxSeeds"} {
		require.ErrorContains(t, err, key)
	}
}

// Checks that run at once (the one after a commit, an operator's, the
// periodic one) evict what one check would: each walks the store after the
// others have deleted, instead of all deleting from the same stale view.
func TestConcurrentChecksEvictOnce(t *testing.T) {
	t.Parallel()
	sn := startSupernode(t)
	n := startNode(t, sn, blobcache.Config{Quota: 2 * mib, LowWater: 1, CheckInterval: time.Hour})
	// Three blobs written straight into the store: over the quota by one,
	// with no commit through the cache to start a check of its own.
	var ds []digest.Digest
	for range 3 {
		b := make([]byte, mib)
		_, _ = rand.Read(b)
		d := digest.FromBytes(b)
		w, err := n.store.Writer(t.Context(), "direct-"+d.Encoded())
		require.NoError(t, err)
		_, err = w.WriteAt(b, 0)
		require.NoError(t, err)
		require.NoError(t, w.Commit(t.Context(), int64(len(b)), d))
		require.NoError(t, w.Close())
		ds = append(ds, d)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { n.cache.Check(t.Context()) })
	}
	wg.Wait()
	kept := 0
	for _, d := range ds {
		if has(t, n.store, d) {
			kept++
		}
	}
	require.Equal(t, 2, kept, "one blob over the quota: one evicted")
}
