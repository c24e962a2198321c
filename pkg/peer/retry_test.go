package peer

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/netpolicy"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/schedclient"
)

// policyClient is a peer client with the default outbound policy: loopback,
// where every test server lives, is refused.
func policyClient(t *testing.T) *http.Client {
	t.Helper()
	p, err := netpolicy.New(netpolicy.Config{}, netpolicy.WithHint("--peer-allow"))
	require.NoError(t, err)
	return p.HTTPClient(http.DefaultTransport.(*http.Transport).Clone())
}

// A CDN on loopback and a peer without a policy entry for it: every piece
// is refused by the peer's own policy. P2P ends at once with one line
// naming the address and the flag, instead of asking for the same piece
// again and again until the stall timeout.
func TestRefusedCDNEndsP2PAtOnce(t *testing.T) {
	t.Parallel()
	data := randomData(t, 3*testPieceSize)
	cdn := newHolder(t, "supernode", data, good)
	f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return cdn.peer, true })
	e := newTestEngine(t, f.addr, engineSetup{
		cfg:  Config{StallTimeout: 20 * time.Second},
		opts: []Option{WithHTTPClient(policyClient(t)), WithPolicyHint("--peer-allow")},
	})
	start := time.Now()
	d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file"})
	require.NoError(t, err)
	defer d.Close()
	_, err = d.Wait(t.Context())
	require.ErrorIs(t, err, ErrP2PFailed)
	require.ErrorIs(t, err, ErrRefused)
	require.Less(t, time.Since(start), 3*time.Second, "not after the stall timeout")
	require.Contains(t, err.Error(), "the supernode's CDN at "+cdn.peer.Addr)
	require.Contains(t, err.Error(), "allow it with --peer-allow 127.0.0.1")
	require.NotContains(t, err.Error(), "\n")
	require.Zero(t, cdn.requests.Load(), "nothing was sent")
	_, _, _, polls := f.snapshot()
	require.Less(t, polls, 5)
}

// A peer the policy refuses, assigned again and again (it is the only
// holder): P2P ends after a few refusals, naming it.
func TestRefusedPeerEndsP2P(t *testing.T) {
	t.Parallel()
	data := randomData(t, 2*testPieceSize)
	h := newHolder(t, "p1", data, good)
	f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return h.peer, false })
	e := newTestEngine(t, f.addr, engineSetup{
		cfg:  Config{StallTimeout: 20 * time.Second},
		opts: []Option{WithHTTPClient(policyClient(t)), WithPolicyHint("--peer-allow")},
	})
	start := time.Now()
	d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file"})
	require.NoError(t, err)
	defer d.Close()
	_, err = d.Wait(t.Context())
	require.ErrorIs(t, err, ErrRefused)
	require.Less(t, time.Since(start), 5*time.Second)
	require.Contains(t, err.Error(), "peer "+h.peer.Addr+" is refused")
	reports, _, _, _ := f.snapshot()
	require.NotEmpty(t, reports)
	for _, r := range reports {
		require.Equal(t, schedapi.ReasonTransfer, r.Reason, "the refused peer is reported, so it can be struck")
		require.Equal(t, "refused by the outbound policy", r.Error)
	}
}

// The supernodes were chosen by the user: pieces from their CDN go through
// the CDN client, outside the peer policy, while a peer on the same
// loopback is still refused by it.
func TestCDNClientOutsidePeerPolicy(t *testing.T) {
	t.Parallel()
	data := randomData(t, 4*testPieceSize)
	cdn := newHolder(t, "supernode", data, good)
	other := newHolder(t, "p1", data, good)
	f := newFakeSched(t, data, func(i, attempt int) (schedapi.Peer, bool) {
		if i == 1 && attempt == 0 {
			return other.peer, false
		}
		return cdn.peer, true
	})
	e := newTestEngine(t, f.addr, engineSetup{
		opts: []Option{WithHTTPClient(policyClient(t)), WithCDNClient(&http.Client{}), WithPolicyHint("--peer-allow")},
	})
	d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file"})
	require.NoError(t, err)
	defer d.Close()
	res, err := d.Wait(t.Context())
	require.NoError(t, err)
	require.False(t, res.FromSource)
	require.Equal(t, data, readBlob(t, e.store, res.Digest))
	require.Zero(t, other.requests.Load(), "the peer policy still refuses peers")
}

// Every piece fetch fails at once (a peer that refuses connections): the
// engine does not ask for the next assignment at once each time; the
// pauses grow until the stall timeout.
func TestNoSpinWhenEveryFetchFails(t *testing.T) {
	t.Parallel()
	data := randomData(t, 2*testPieceSize)
	dead := deadPeer(t, "dead")
	f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return dead, false })
	e := newTestEngine(t, f.addr, engineSetup{cfg: Config{StallTimeout: 3 * time.Second}})
	d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file"})
	require.NoError(t, err)
	defer d.Close()
	_, err = d.Wait(t.Context())
	require.ErrorIs(t, err, ErrP2PFailed)
	reports, _, _, polls := f.snapshot()
	// With pauses from 20ms doubling to 2s, about 8 rounds fit in 3s; a
	// spinning loop makes thousands.
	require.Less(t, polls, 40, "polls")
	require.Less(t, len(reports), 80, "failed fetches")
}

// The supernode dies mid-download: the engine says so within seconds (an
// event and Progress naming it) and the final error names it; the stall
// timeout still bounds the wait.
func TestUnreachableSupernodeSaidAtOnce(t *testing.T) {
	t.Parallel()
	data := randomData(t, 3*testPieceSize)
	h := newHolder(t, "gated", data, gated)
	f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return h.peer, false })
	e := newTestEngine(t, f.addr, engineSetup{cfg: Config{StallTimeout: 4 * time.Second}})
	d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file"})
	require.NoError(t, err)
	defer d.Close()
	h.release(0)
	require.Eventually(t, func() bool { return d.Progress().Completed == testPieceSize }, 5*time.Second, 5*time.Millisecond)
	f.kill()
	killed := time.Now()
	select {
	case ev := <-d.Events():
		require.Equal(t, EventKind("unreachable"), ev.Kind)
		require.Equal(t, f.addr, ev.Node)
		require.Less(t, time.Since(killed), 3*time.Second)
		require.Contains(t, ev.String(), "supernode "+f.addr+" unreachable")
	case <-time.After(3 * time.Second):
		t.Fatal("no event within 3s of the supernode's death")
	}
	p := d.Progress()
	require.Equal(t, f.addr, p.Unreachable)
	require.False(t, p.UnreachableSince.IsZero())
	_, err = d.Wait(t.Context())
	require.ErrorIs(t, err, ErrP2PFailed)
	require.ErrorIs(t, err, ErrStalled)
	require.ErrorIs(t, err, schedclient.ErrUnreachable)
	require.Contains(t, err.Error(), f.addr)
	require.GreaterOrEqual(t, time.Since(killed), time.Second, "the stall timeout bounds it, not the first failed poll")
}

// The supernode's source fetch failed because the origin rate-limits: the
// peer does not go to the origin itself but waits RetryAfter (with jitter)
// and registers again, until the CDN's next attempt runs.
func TestRateLimitedOriginWaitsForCDN(t *testing.T) {
	t.Parallel()
	data := randomData(t, 3*testPieceSize)
	h := newHolder(t, "p1", data, good)
	f := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return h.peer, false })
	f.rateLimited.Store(3)
	src := &fakeSource{data: data}
	e := newTestEngine(t, f.addr, engineSetup{opts: []Option{WithSource(src)}})
	start := time.Now()
	d, err := e.Download(t.Context(), Request{URL: "http://origin.test/file", BackToSource: true})
	require.NoError(t, err)
	defer d.Close()
	res, err := d.Wait(t.Context())
	require.NoError(t, err)
	require.False(t, res.FromSource)
	require.Zero(t, src.fetches.Load(), "the origin is left to the CDN")
	require.Equal(t, data, readBlob(t, e.store, res.Digest))
	_, registers, _, _ := f.snapshot()
	require.Len(t, registers, 4)
	require.GreaterOrEqual(t, time.Since(start), 3*rateLimitedRetryAfter, "RetryAfter honoured")

	// Still rate-limited when the stall timeout would pass: the source.
	f2 := newFakeSched(t, data, func(int, int) (schedapi.Peer, bool) { return h.peer, false })
	f2.rateLimited.Store(1000)
	src2 := &fakeSource{data: data}
	e2 := newTestEngine(t, f2.addr, engineSetup{cfg: Config{StallTimeout: time.Second}, opts: []Option{WithSource(src2)}})
	d2, err := e2.Download(t.Context(), Request{URL: "http://origin.test/file", BackToSource: true})
	require.NoError(t, err)
	defer d2.Close()
	var fallback Event
	for ev := range d2.Events() {
		if ev.Kind == EventFallback {
			fallback = ev
		}
	}
	res, err = d2.Wait(t.Context())
	require.NoError(t, err)
	require.True(t, res.FromSource)
	require.Contains(t, fallback.Reason, "rate-limiting")
	_, registers, _, _ = f2.snapshot()
	require.Less(t, len(registers), 6, "registrations paced by RetryAfter")
}
