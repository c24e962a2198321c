package peerapi

import (
	"net/http"
	"net/http/httptest"
	"testing"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/peer"
	"github.com/damselfly/damselfly/pkg/piece"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/schedclient"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// Client and server name a task alike: the peer engine's ID for a request
// (peer.Request.TaskID, what it serves a download under when no supernode
// answered), the key pkg/schedclient routes the register by (the supernode
// it goes to first) and the ID this server derives from the register body
// are one ID. A copy of the rule that drifted would split one swarm across
// supernodes.
func TestClientAndServerDeriveOneTaskID(t *testing.T) {
	t.Parallel()
	const nodes = 5
	fakes := make([]*fake, nodes)
	addrs := make([]string, nodes)
	byBase := map[string]*fake{}
	for i := range fakes {
		fakes[i] = &fake{info: schedapi.TaskInfo{State: schedapi.TaskRunning, PieceSize: piece.DefaultSize}}
		srv := httptest.NewServer(New(stitched{fakes[i]}, fakes[i], testKeys).Handler())
		t.Cleanup(srv.Close)
		addrs[i] = srv.URL
		byBase[srv.URL] = fakes[i]
	}
	c, err := schedclient.New(addrs, schedclient.WithClusterKeys(testKeys))
	require.NoError(t, err)

	d := digest.FromString("layer")
	for _, req := range []peer.Request{
		{URL: "https://registry.example/v2/x/blobs/" + d.String(), Digest: d},
		{URL: "http://mirror.example/other/path", Digest: d},
		{URL: "http://Example.COM:80/a/b?y=2&x=1&sig=s#frag", Filter: []string{"sig"}},
		{URL: "http://example.com/a/b?x=1&y=2", Identifier: "v2"},
		{URL: "https://example.com:8443/file?Expires=1&X-Amz-Signature=abc", Filter: []string{"Expires", "X-Amz-Signature"}, Identifier: "id"},
		{URL: testMagnet, File: "set/a.iso"},
		{URL: testMagnet},
		{URL: "torrent+https://Files.example:443/set.torrent?k=v", File: "set/b.iso", Identifier: "id"},
	} {
		t.Run(req.URL, func(t *testing.T) {
			engineID, err := req.TaskID()
			require.NoError(t, err)

			// The fields the engine registers with (pkg/peer Download).
			reg := schedapi.RegisterRequest{
				Peer: goodPeer, URL: req.URL, Header: http.Header{}, Digest: req.Digest.String(),
				Filter: req.Filter, Identifier: req.Identifier, File: req.File,
			}
			resp, err := c.Register(t.Context(), reg)
			require.NoError(t, err)
			serverID, err := taskid.Parse(resp.TaskID)
			require.NoError(t, err)
			require.Equal(t, engineID, serverID, "engine and server")

			owner := byBase[c.Order(serverID)[0]]
			owner.mu.Lock()
			defer owner.mu.Unlock()
			require.NotEmpty(t, owner.ensured, "the register went to the supernode owning the server's ID")
			require.Equal(t, serverID, owner.ensured[len(owner.ensured)-1].TaskID)
		})
	}
}
