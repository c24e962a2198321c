package manifestcache

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/damselfly/damselfly/pkg/source/registrysource"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	docker2 = "application/vnd.docker.distribution.manifest.v2+json"
	ociIdx  = ocispec.MediaTypeImageIndex
	ociMan  = ocispec.MediaTypeImageManifest
)

var upstream = &url.URL{Scheme: "https", Host: "registry.example"}

type fixture struct {
	reg   *fakeRegistry
	clock *fakeClock
	prom  *prometheus.Registry
	c     *Cache
}

func newFixture(t *testing.T, cfg Config) *fixture {
	t.Helper()
	f := &fixture{reg: newFakeRegistry(), clock: newFakeClock(), prom: prometheus.NewRegistry()}
	var err error
	f.c, err = New(cfg, f.reg, WithClock(f.clock.Now), WithMetrics(f.prom))
	require.NoError(t, err)
	return f
}

func (f *fixture) get(t *testing.T, repo, ref, auth string, accept ...string) (*Manifest, error) {
	t.Helper()
	return f.c.Get(t.Context(), Request{Upstream: upstream, Repo: repo, Ref: ref, Authorization: auth, Accept: accept})
}

// counter reads the value of a counter or gauge.
func counter(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	require.NoError(t, c.Write(&m))
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

// connErr is what a refused connection looks like to a fetcher.
var connErr = &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}

// TestTagLifecycle walks one tag through TTL expiry, upstream failures,
// stale serving, 404 and 401, checking each answer and the number of
// upstream requests after each step.
func TestTagLifecycle(t *testing.T) {
	t.Parallel()
	type step struct {
		advance time.Duration
		fail    error // upstream outage for this step (nil: healthy)
		remove  bool  // the tag is deleted upstream before this step
		private bool  // the repository starts wanting credentials
		want    string
		stale   bool
		calls   int // upstream requests (GET or HEAD) so far
	}
	const (
		ok          = "ok"
		notFound    = "not found"
		unavailable = "unavailable"
		denied      = "denied"
	)
	cfg := Config{TagTTL: 30 * time.Second, StaleIfError: 5 * time.Minute, NegativeTTL: 5 * time.Second}
	tests := []struct {
		name  string
		steps []step
	}{
		{"fresh entry answers without the upstream", []step{
			{want: ok, calls: 1}, {advance: 29 * time.Second, want: ok, calls: 1},
		}},
		{"TTL expiry asks once more", []step{
			{want: ok, calls: 1}, {advance: 30 * time.Second, want: ok, calls: 2}, {want: ok, calls: 2},
		}},
		{"5xx within the stale window serves stale", []step{
			{want: ok, calls: 1},
			{advance: 30*time.Second + 4*time.Minute, fail: respErr(http.StatusServiceUnavailable), want: ok, stale: true, calls: 2},
			{fail: respErr(http.StatusBadGateway), want: ok, stale: true, calls: 3},
		}},
		{"connection error within the window serves stale", []step{
			{want: ok, calls: 1}, {advance: time.Minute, fail: connErr, want: ok, stale: true, calls: 2},
		}},
		{"429 within the window serves stale", []step{
			{want: ok, calls: 1}, {advance: time.Minute, fail: respErr(http.StatusTooManyRequests), want: ok, stale: true, calls: 2},
		}},
		{"beyond the stale window the failure is returned", []step{
			{want: ok, calls: 1},
			{advance: 30*time.Second + 5*time.Minute, fail: respErr(http.StatusInternalServerError), want: unavailable, calls: 2},
		}},
		{"recovery after stale serves fresh", []step{
			{want: ok, calls: 1},
			{advance: time.Minute, fail: connErr, want: ok, stale: true, calls: 2},
			{want: ok, calls: 3},
			{advance: time.Second, want: ok, calls: 3},
		}},
		{"404 after expiry is not served stale, and is cached", []step{
			{want: ok, calls: 1},
			{advance: time.Minute, remove: true, want: notFound, calls: 2},
			{advance: 4 * time.Second, want: notFound, calls: 2},
			{advance: time.Second, want: notFound, calls: 3},
		}},
		{"401 after expiry is not served stale, never cached", []step{
			{want: ok, calls: 1},
			{advance: time.Minute, private: true, want: denied, calls: 2},
			{want: denied, calls: 3},
		}},
		{"401 drops a fresh-looking entry of the partition", []step{
			{want: ok, calls: 1},
			{advance: 31 * time.Second, private: true, want: denied, calls: 2},
			// Even within the stale window an outage must not bring it back.
			{fail: connErr, want: unavailable, calls: 3},
		}},
		{"no upstream at all and nothing cached", []step{
			{fail: connErr, want: unavailable, calls: 1},
			{fail: connErr, want: unavailable, calls: 2},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, cfg)
			m0 := f.reg.put("library/app", "1", docker2, 300)
			for i, s := range tt.steps {
				f.clock.Advance(s.advance)
				f.reg.setFail(s.fail)
				if s.remove {
					f.reg.mu.Lock()
					delete(f.reg.tags, "library/app:1")
					f.reg.mu.Unlock()
				}
				if s.private {
					f.reg.mu.Lock()
					f.reg.private["library/app"] = true
					f.reg.mu.Unlock()
				}
				m, err := f.get(t, "library/app", "1", "")
				switch s.want {
				case ok:
					require.NoError(t, err, "step %d", i)
					require.Equal(t, m0.Digest, m.Digest, "step %d", i)
					require.Equal(t, m0.Body, m.Body, "step %d", i)
					require.Equal(t, docker2, m.MediaType, "step %d", i)
					require.Equal(t, s.stale, m.Stale, "step %d", i)
				case notFound:
					require.ErrorIs(t, err, ErrNotFound, "step %d", i)
				case unavailable:
					require.ErrorIs(t, err, ErrUnavailable, "step %d", i)
				case denied:
					var re *registrysource.ResponseError
					require.ErrorAs(t, err, &re, "step %d", i)
					require.Equal(t, http.StatusUnauthorized, re.StatusCode)
					require.NotEmpty(t, re.Header.Get("WWW-Authenticate"), "the challenge reaches the client")
					require.NotErrorIs(t, err, ErrUnavailable)
				}
				gets, heads := f.reg.calls()
				require.Equal(t, s.calls, gets+heads, "upstream requests after step %d", i)
				if s.want == ok {
					require.Equal(t, 1, gets, "the body is fetched once; later resolutions are HEADs")
				}
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Config{})
	f.reg.put("library/app", "1", docker2, 500)
	_, err := f.get(t, "library/app", "1", "")
	require.NoError(t, err)
	_, err = f.get(t, "library/app", "1", "")
	require.NoError(t, err)
	_, err = f.get(t, "library/app", "nope", "")
	require.ErrorIs(t, err, ErrNotFound)
	_, err = f.get(t, "library/app", "nope", "")
	require.ErrorIs(t, err, ErrNotFound)
	f.clock.Advance(time.Minute)
	f.reg.setFail(connErr)
	m, err := f.get(t, "library/app", "1", "")
	require.NoError(t, err)
	require.True(t, m.Stale)

	require.Equal(t, 1.0, counter(t, f.c.m.hits.WithLabelValues(kindTag)))
	require.Equal(t, 3.0, counter(t, f.c.m.misses.WithLabelValues(kindTag)))
	require.Equal(t, 1.0, counter(t, f.c.m.negative.WithLabelValues(kindTag)))
	require.Equal(t, 1.0, counter(t, f.c.m.stale.WithLabelValues(kindTag)))
	require.Equal(t, 1.0, counter(t, f.c.m.upstream.WithLabelValues("GET", resultOK)))
	require.Equal(t, 1.0, counter(t, f.c.m.upstream.WithLabelValues("GET", resultNotFound)))
	require.Equal(t, 1.0, counter(t, f.c.m.upstream.WithLabelValues("HEAD", resultError)), "revalidation is a HEAD")
	require.Equal(t, 500.0, counter(t, f.c.m.bytes))
	require.Equal(t, 1.0, counter(t, f.c.m.manifests))

	// Everything is exported under the documented names.
	mfs, err := f.prom.Gather()
	require.NoError(t, err)
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	require.Subset(t, names, []string{
		"damselfly_registry_cache_hits_total", "damselfly_registry_cache_misses_total",
		"damselfly_registry_cache_upstream_requests_total", "damselfly_registry_cache_stale_serves_total",
		"damselfly_registry_cache_negative_hits_total", "damselfly_registry_cache_bytes",
		"damselfly_registry_cache_evictions_total", "damselfly_registry_cache_manifests",
		"damselfly_registry_cache_entries",
	})
}

// TestConcurrentCallersOneUpstreamCall: 200 clients asking for one tag at
// once cause one upstream request; once the TTL has passed, 200 more cause
// exactly one more.
func TestConcurrentCallersOneUpstreamCall(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		reg := newFakeRegistry()
		m0 := reg.put("library/app", "1", docker2, 400)
		c, err := New(Config{TagTTL: 30 * time.Second}, reg)
		require.NoError(t, err)

		round := func() {
			gate := make(chan struct{})
			reg.mu.Lock()
			reg.gate = gate
			reg.mu.Unlock()
			var wg sync.WaitGroup
			errs := make(chan error, 200)
			for range 200 {
				wg.Go(func() {
					m, err := c.Get(t.Context(), Request{Upstream: upstream, Repo: "library/app", Ref: "1"})
					if err == nil && m.Digest != m0.Digest {
						err = errors.New("wrong digest " + m.Digest.String())
					}
					errs <- err
				})
			}
			synctest.Wait() // every caller is waiting on the one fill
			close(gate)
			wg.Wait()
			close(errs)
			for err := range errs {
				require.NoError(t, err)
			}
		}
		round()
		gets, _ := reg.calls()
		require.Equal(t, 1, gets)

		time.Sleep(30 * time.Second)
		round()
		gets, heads := reg.calls()
		require.Equal(t, 1, gets)
		require.Equal(t, 1, heads, "one revalidation for 200 callers")
	})
}

// TestClientHangingUpDoesNotFailOthers: the first caller's context ends while
// the fill is in flight; the fill goes on and the other caller gets the
// manifest, which is then cached.
func TestClientHangingUpDoesNotFailOthers(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		reg := newFakeRegistry()
		m0 := reg.put("library/app", "1", docker2, 400)
		gate := make(chan struct{})
		reg.gate = gate
		c, err := New(Config{}, reg)
		require.NoError(t, err)
		req := Request{Upstream: upstream, Repo: "library/app", Ref: "1"}

		ctx1, cancel1 := context.WithCancel(t.Context())
		first := make(chan error, 1)
		go func() {
			_, err := c.Get(ctx1, req)
			first <- err
		}()
		synctest.Wait()
		second := make(chan *Manifest, 1)
		go func() {
			m, err := c.Get(t.Context(), req)
			if err != nil {
				t.Error(err)
			}
			second <- m
		}()
		synctest.Wait()
		cancel1()
		require.ErrorIs(t, <-first, context.Canceled)
		close(gate)
		m := <-second
		require.Equal(t, m0.Digest, m.Digest)

		reg.mu.Lock()
		reg.gate = nil
		reg.mu.Unlock()
		_, err = c.Get(t.Context(), req)
		require.NoError(t, err)
		gets, _ := reg.calls()
		require.Equal(t, 1, gets, "the hung-up client's fill was cached")
	})
}

// TestFillTimeout: an upstream that never answers fails the fill after
// FillTimeout, as unavailable.
func TestFillTimeout(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		reg := newFakeRegistry()
		reg.put("library/app", "1", docker2, 400)
		reg.gate = make(chan struct{}) // never closed
		c, err := New(Config{FillTimeout: 10 * time.Second}, reg)
		require.NoError(t, err)
		start := time.Now()
		_, err = c.Get(t.Context(), Request{Upstream: upstream, Repo: "library/app", Ref: "1"})
		require.ErrorIs(t, err, ErrUnavailable)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		require.Equal(t, 10*time.Second, time.Since(start))
	})
}

func TestNegativeCaching(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		ref      string
		ttl      time.Duration
		advances []time.Duration
		gets     []int
	}{
		{"tag 404 cached then expires", "missing", 5 * time.Second, []time.Duration{0, 4 * time.Second, time.Second}, []int{1, 1, 2}},
		{"digest 404 cached then expires", digest.FromString("nothing").String(), 5 * time.Second, []time.Duration{0, 4 * time.Second, time.Second}, []int{1, 1, 2}},
		{"negative caching off", "missing", -1, []time.Duration{0, 0}, []int{1, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, Config{NegativeTTL: tt.ttl})
			for i, adv := range tt.advances {
				f.clock.Advance(adv)
				_, err := f.get(t, "library/app", tt.ref, "")
				require.ErrorIs(t, err, ErrNotFound)
				gets, _ := f.reg.calls()
				require.Equal(t, tt.gets[i], gets, "step %d", i)
			}
		})
	}
}

func TestNegativeEntryIsPerPartition(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Config{})
	f.reg.private["team/app"] = true
	f.reg.allowed["Bearer alice"] = true
	m0 := f.reg.put("team/app", "1", docker2, 200)
	// Another client's 404 (here: a tag it asks for that is missing) must
	// not hide what exists from a client of another partition.
	_, err := f.get(t, "team/app", "2", "Bearer alice")
	require.ErrorIs(t, err, ErrNotFound)
	m, err := f.get(t, "team/app", "1", "Bearer alice")
	require.NoError(t, err)
	require.Equal(t, m0.Digest, m.Digest)
}

func TestLRUEvictionByBytes(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Config{MaxBytes: 1000})
	a := f.reg.put("library/a", "1", docker2, 400)
	b := f.reg.put("library/b", "1", docker2, 400)
	c := f.reg.put("library/c", "1", docker2, 400)
	for _, repo := range []string{"library/a", "library/b"} {
		_, err := f.get(t, repo, "1", "")
		require.NoError(t, err)
	}
	// a is used again, so b is the least recently used when c arrives.
	_, err := f.get(t, "library/a", a.Digest.String(), "")
	require.NoError(t, err)
	_, err = f.get(t, "library/c", "1", "")
	require.NoError(t, err)
	require.Equal(t, 1.0, counter(t, f.c.m.evictions))
	require.Equal(t, 800.0, counter(t, f.c.m.bytes))
	gets, _ := f.reg.calls()
	require.Equal(t, 3, gets)

	for repo, m := range map[string]*registrysource.Manifest{"library/a": a, "library/c": c} {
		_, err := f.get(t, repo, m.Digest.String(), "")
		require.NoError(t, err)
	}
	gets, _ = f.reg.calls()
	require.Equal(t, 3, gets, "a and c are still cached")

	_, err = f.get(t, "library/b", b.Digest.String(), "")
	require.NoError(t, err)
	gets, _ = f.reg.calls()
	require.Equal(t, 4, gets, "b was evicted and is fetched again")

	// A manifest larger than the whole cache is served, never kept.
	big := f.reg.put("library/big", "1", docker2, 2000)
	for range 2 {
		m, err := f.get(t, "library/big", "1", "")
		require.NoError(t, err)
		require.Equal(t, big.Digest, m.Digest)
	}
	gets, _ = f.reg.calls()
	require.Equal(t, 6, gets)
	require.LessOrEqual(t, counter(t, f.c.m.bytes), 1000.0)
}

// TestPartitions: what one client fetched with its credentials is served to
// another client only after the upstream confirmed, with that client's own
// credentials, that it may read it.
func TestPartitions(t *testing.T) {
	t.Parallel()
	const alice, bob, eve = "Bearer alice-token", "Basic Ym9iOnB3", "Bearer eve-token"
	type call struct {
		auth, ref string
		want      string // "ok", "denied"
		gets      int
		heads     int
	}
	tests := []struct {
		name    string
		private bool
		calls   []call
	}{
		{"anonymous clients share one entry for a public image", false, []call{
			{"", "1", "ok", 1, 0}, {"", "1", "ok", 1, 0}, {"", "@", "ok", 1, 0},
		}},
		{"private tag fetched by alice is not served to anonymous", true, []call{
			{alice, "1", "ok", 1, 0}, {"", "1", "denied", 1, 1}, {"", "1", "denied", 1, 2}, {alice, "1", "ok", 1, 2},
		}},
		{"private digest fetched by alice is not served to anonymous or eve", true, []call{
			{alice, "1", "ok", 1, 0}, {"", "@", "denied", 1, 1}, {eve, "@", "denied", 1, 2}, {"", "@", "denied", 1, 3},
		}},
		{"bob may read it: a HEAD with his credentials, no body fetch", true, []call{
			{alice, "1", "ok", 1, 0}, {bob, "@", "ok", 1, 1}, {bob, "@", "ok", 1, 1}, {alice, "@", "ok", 1, 1},
		}},
		{"another partition resolves the tag with a HEAD, the body is not fetched again", false, []call{
			{"", "1", "ok", 1, 0}, {alice, "1", "ok", 1, 1}, {alice, "1", "ok", 1, 1}, {"", "1", "ok", 1, 1},
			{bob, "@", "ok", 1, 2},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, Config{})
			m0 := f.reg.put("team/app", "1", docker2, 300)
			f.reg.private["team/app"] = tt.private
			f.reg.allowed[alice] = true
			f.reg.allowed[bob] = true
			for i, cl := range tt.calls {
				ref := cl.ref
				if ref == "@" {
					ref = m0.Digest.String()
				}
				m, err := f.get(t, "team/app", ref, cl.auth)
				if cl.want == "ok" {
					require.NoError(t, err, "call %d", i)
					require.Equal(t, m0.Body, m.Body)
				} else {
					var re *registrysource.ResponseError
					require.ErrorAs(t, err, &re, "call %d", i)
					require.Equal(t, http.StatusUnauthorized, re.StatusCode)
					require.Nil(t, m)
				}
				gets, heads := f.reg.calls()
				require.Equal(t, cl.gets, gets, "GETs after call %d", i)
				require.Equal(t, cl.heads, heads, "HEADs after call %d", i)
			}
			// Each upstream request carried the caller's own header, or none.
			f.reg.mu.Lock()
			defer f.reg.mu.Unlock()
			for _, h := range f.reg.headers {
				if v := h.Get("Authorization"); v != "" {
					require.Contains(t, []string{alice, bob, eve}, v)
				}
			}
			// Nothing kept holds the header itself.
			f.c.mu.Lock()
			defer f.c.mu.Unlock()
			for k := range f.c.entries.items {
				for _, secret := range []string{"alice", "bob", "eve", "Ym9i"} {
					require.NotContains(t, k, secret)
				}
			}
		})
	}
}

func TestStalePermission(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Config{AccessTTL: time.Minute, StaleIfError: 5 * time.Minute})
	m0 := f.reg.put("team/app", "1", docker2, 300)
	_, err := f.get(t, "team/app", "1", "")
	require.NoError(t, err)
	f.clock.Advance(2 * time.Minute)
	f.reg.setFail(connErr)
	m, err := f.get(t, "team/app", m0.Digest.String(), "")
	require.NoError(t, err)
	require.True(t, m.Stale)
	_, heads := f.reg.calls()
	require.Equal(t, 1, heads)

	// Another partition never had a permission: nothing stale to stand on.
	_, err = f.get(t, "team/app", m0.Digest.String(), "Bearer other")
	require.ErrorIs(t, err, ErrUnavailable)

	f.clock.Advance(5 * time.Minute)
	_, err = f.get(t, "team/app", m0.Digest.String(), "")
	require.ErrorIs(t, err, ErrUnavailable)
}

func TestAcceptNegotiation(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Config{})
	idx := f.reg.put("library/app", "1", ociIdx, 300)
	man := f.reg.put("library/app", "1", docker2, 300)

	m, err := f.get(t, "library/app", "1", "", ociIdx+", "+docker2)
	require.NoError(t, err)
	require.Equal(t, idx.Digest, m.Digest)
	m, err = f.get(t, "library/app", "1", "", docker2)
	require.NoError(t, err)
	require.Equal(t, man.Digest, m.Digest, "a client that only takes schema 2 never gets the index")
	gets, _ := f.reg.calls()
	require.Equal(t, 2, gets)

	// The same set, in another order, case and split: the same entry.
	m, err = f.get(t, "library/app", "1", "", strings.ToUpper(docker2), " "+ociIdx+" ")
	require.NoError(t, err)
	require.Equal(t, idx.Digest, m.Digest)
	gets, _ = f.reg.calls()
	require.Equal(t, 2, gets)

	// By digest the content is fixed: asked with every manifest type, so
	// the first client's Accept cannot make it a 404 for later ones.
	m, err = f.get(t, "library/app", idx.Digest.String(), "", ociIdx)
	require.NoError(t, err)
	require.Equal(t, ociIdx, m.MediaType)
	// ...and so is every later client's, whatever its Accept: by digest
	// the content is pinned (a registry answers 200 too).
	m, err = f.get(t, "library/app", idx.Digest.String(), "", docker2)
	require.NoError(t, err)
	require.Equal(t, idx.Digest, m.Digest)
	require.Equal(t, ociIdx, m.MediaType)
	m, err = f.get(t, "library/app", idx.Digest.String(), "", "*/*")
	require.NoError(t, err)
	require.Equal(t, idx.Digest, m.Digest)
	// A fetch by digest asks with every manifest type besides the
	// client's.
	other := f.reg.put("library/app", "2", ociMan, 300)
	m, err = f.get(t, "library/app", other.Digest.String(), "", ociMan)
	require.NoError(t, err)
	require.Equal(t, other.Digest, m.Digest)
	f.reg.mu.Lock()
	lastAccept := f.reg.accepts[len(f.reg.accepts)-1]
	f.reg.mu.Unlock()
	require.Subset(t, lastAccept, []string{ociIdx, ociMan, docker2})
}

func TestDigestVerifiedBeforeCaching(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Config{})
	m0 := f.reg.put("library/app", "1", docker2, 300)
	f.reg.tamper = true
	for _, ref := range []string{"1", m0.Digest.String()} {
		_, err := f.get(t, "library/app", ref, "")
		require.ErrorIs(t, err, ErrUnavailable)
		require.ErrorIs(t, err, registrysource.ErrDigestMismatch)
	}
	require.Equal(t, 0.0, counter(t, f.c.m.bytes), "nothing unverified is cached")
	f.reg.tamper = false
	m, err := f.get(t, "library/app", "1", "")
	require.NoError(t, err)
	require.Equal(t, m0.Digest, m.Digest)
	gets, _ := f.reg.calls()
	require.Equal(t, 3, gets)
}

func TestTagThenDigestNeedsNoUpstream(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Config{})
	m0 := f.reg.put("library/app", "1", docker2, 300)
	_, err := f.get(t, "library/app", "1", "Bearer x")
	require.NoError(t, err)
	m, err := f.get(t, "library/app", m0.Digest.String(), "Bearer x")
	require.NoError(t, err)
	require.Equal(t, m0.Body, m.Body)
	gets, heads := f.reg.calls()
	require.Equal(t, 1, gets)
	require.Equal(t, 0, heads)
	require.Equal(t, 1.0, counter(t, f.c.m.hits.WithLabelValues(kindDigest)))
}

func TestBadRequests(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Config{})
	tests := []struct {
		name string
		req  Request
	}{
		{"no upstream", Request{Repo: "a", Ref: "1"}},
		{"ftp upstream", Request{Upstream: &url.URL{Scheme: "ftp", Host: "x"}, Repo: "a", Ref: "1"}},
		{"uppercase repo", Request{Upstream: upstream, Repo: "A", Ref: "1"}},
		{"empty repo", Request{Upstream: upstream, Ref: "1"}},
		{"bad tag", Request{Upstream: upstream, Repo: "a", Ref: "-x"}},
		{"bad digest", Request{Upstream: upstream, Repo: "a", Ref: "sha256:abc"}},
		{"empty ref", Request{Upstream: upstream, Repo: "a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := f.c.Get(t.Context(), tt.req)
			require.ErrorIs(t, err, ErrBadRequest)
		})
	}
	t.Cleanup(func() {
		gets, heads := f.reg.calls()
		if gets+heads != 0 {
			t.Errorf("bad requests reached the upstream: %d GETs, %d HEADs", gets, heads)
		}
	})
}

func TestConfig(t *testing.T) {
	t.Parallel()
	d := Config{}.ApplyDefaults()
	require.Equal(t, Config{TagTTL: 30 * time.Second, StaleIfError: 5 * time.Minute, NegativeTTL: 5 * time.Second,
		AccessTTL: time.Minute, MaxBytes: 64 << 20, MaxEntries: 100_000, FillTimeout: time.Minute}, d)
	require.NoError(t, d.Validate())

	bad := Config{TagTTL: -1, AccessTTL: -1, MaxBytes: -1, MaxEntries: -1, FillTimeout: -1}
	err := bad.ApplyDefaults().Validate()
	require.ErrorIs(t, err, ErrInvalid)
	for _, key := range []string{"tagTTL", "accessTTL", "maxBytes", "maxEntries", "fillTimeout"} {
		require.Contains(t, err.Error(), key)
	}
	// Negative stale and negative-cache windows switch them off.
	off := Config{StaleIfError: -1, NegativeTTL: -1}.ApplyDefaults()
	require.NoError(t, off.Validate())
	require.Equal(t, time.Duration(0), off.staleWindow())

	_, err = New(bad, newFakeRegistry())
	require.ErrorIs(t, err, ErrInvalid)
}

func TestAcceptTypes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   []string
		want string
	}{
		{nil, ""},
		{[]string{"B/x, a/y"}, "a/y,b/x"},
		{[]string{"a/y ; q=0.5", "a/y;q=0.5"}, "a/y;q=0.5"},
		{[]string{"a/y", "a/y", " , "}, "a/y"},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, normaliseAccept(tt.in), "%q", tt.in)
	}
}

// TestDigestWhateverAccept: a manifest asked for by digest is served
// whatever the client's Accept, from the upstream and from the cache; the
// content is pinned by the digest.
func TestDigestWhateverAccept(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Config{})
	m0 := f.reg.put("library/app", "1", docker2, 300)
	for i := range 2 { // a miss, then a hit
		m, err := f.get(t, "library/app", m0.Digest.String(), "", ociMan)
		require.NoError(t, err, "attempt %d", i)
		require.Equal(t, m0.Body, m.Body)
		require.Equal(t, docker2, m.MediaType, "the type the upstream gave, not the one asked for")
		require.Equal(t, []string{docker2}, m.Headers.ContentType)
	}
	m, err := f.get(t, "library/app", m0.Digest.String(), "Bearer other", ociIdx+";q=1", "text/plain")
	require.NoError(t, err, "another partition, confirmed by HEAD")
	require.Equal(t, docker2, m.MediaType)
}

// TestContentTypePerUpstreamAndRepo: one digest served by two upstreams, or
// two repositories of one, is answered with the Content-Type each gave, not
// with the first one seen for the digest.
func TestContentTypePerUpstreamAndRepo(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Config{})
	m0 := f.reg.put("team/a", "1", docker2, 300)
	const custom = "application/vnd.example.manifest+json"
	f.reg.mu.Lock()
	f.reg.tags["team/b:1"] = append(f.reg.tags["team/b:1"], m0)
	f.reg.ctype["mirror.example/team/a"] = ociMan
	f.reg.ctype["registry.example/team/b"] = custom
	f.reg.mu.Unlock()
	other := &url.URL{Scheme: "https", Host: "mirror.example"}
	get := func(up *url.URL, repo, ref, auth string) *Manifest {
		t.Helper()
		m, err := f.c.Get(t.Context(), Request{Upstream: up, Repo: repo, Ref: ref, Authorization: auth})
		require.NoError(t, err, "%s/%s:%s", up.Host, repo, ref)
		require.Equal(t, m0.Digest, m.Digest)
		require.Equal(t, m0.Body, m.Body)
		require.Equal(t, m.MediaType, m.Headers.ContentType[0], "Headers agree with MediaType")
		return m
	}
	d := m0.Digest.String()
	for range 2 { // filled, then from the cache
		require.Equal(t, docker2, get(upstream, "team/a", "1", "").MediaType)
		require.Equal(t, docker2, get(upstream, "team/a", d, "").MediaType)
		require.Equal(t, ociMan, get(other, "team/a", d, "").MediaType, "body cached, confirmed by HEAD")
		require.Equal(t, ociMan, get(other, "team/a", "1", "").MediaType)
		require.Equal(t, custom, get(upstream, "team/b", d, "").MediaType)
		require.Equal(t, custom, get(upstream, "team/b", "1", "Bearer x").MediaType)
		require.Equal(t, docker2, get(upstream, "team/a", "1", "Bearer x").MediaType, "resolved by HEAD")
	}

	// Served stale through an outage: still each one's own type.
	f.reg.setFail(respErr(http.StatusServiceUnavailable))
	f.clock.Advance(2 * time.Minute)
	m := get(other, "team/a", "1", "")
	require.True(t, m.Stale)
	require.Equal(t, ociMan, m.MediaType)
	m = get(upstream, "team/b", d, "")
	require.True(t, m.Stale)
	require.Equal(t, custom, m.MediaType)
}

// TestTagMoved: a revalidation by HEAD that names a digest not cached
// fetches it; one that names a cached digest does not.
func TestTagMoved(t *testing.T) {
	t.Parallel()
	f := newFixture(t, Config{TagTTL: 30 * time.Second})
	m1 := f.reg.put("library/app", "1", docker2, 300)
	m, err := f.get(t, "library/app", "1", "")
	require.NoError(t, err)
	require.Equal(t, m1.Digest, m.Digest)

	// The tag moves to a new manifest.
	f.reg.mu.Lock()
	delete(f.reg.tags, "library/app:1")
	f.reg.mu.Unlock()
	m2 := f.reg.put("library/app", "1", docker2, 310)

	m, err = f.get(t, "library/app", "1", "")
	require.NoError(t, err)
	require.Equal(t, m1.Digest, m.Digest, "within the TTL the old resolution stands")

	f.clock.Advance(30 * time.Second)
	m, err = f.get(t, "library/app", "1", "")
	require.NoError(t, err)
	require.Equal(t, m2.Digest, m.Digest)
	require.Equal(t, m2.Body, m.Body)
	gets, heads := f.reg.calls()
	require.Equal(t, 2, gets, "the new manifest was fetched")
	require.Equal(t, 1, heads)

	// Another client: a HEAD names m2, which is cached now.
	m, err = f.get(t, "library/app", "1", "Bearer other")
	require.NoError(t, err)
	require.Equal(t, m2.Digest, m.Digest)
	gets, heads = f.reg.calls()
	require.Equal(t, 2, gets)
	require.Equal(t, 2, heads)
}
