package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/stretchr/testify/require"
	"golang.org/x/sync/errgroup"

	dfdaemoncmd "github.com/damselfly/damselfly/dfdaemon/cmd"
	"github.com/damselfly/damselfly/pkg/registrytest"
)

// startDfdaemon runs a dfdaemon in this process and returns its mirror
// address.
func startDfdaemon(t *testing.T, node string, upstream string, extraArgs ...string) string {
	t.Helper()
	args := append([]string{
		"--listen", "127.0.0.1:0", "--peer-listen", "127.0.0.1:0", "--advertise-ip", "127.0.0.1",
		"--node", node, "--registry", upstream,
		"--data-dir", filepath.Join(t.TempDir(), "dfdaemon"), "--log-level", "warn",
		// The registry, the CDN and the peers live on loopback.
		"--source-allow", "127.0.0.1/32", "--peer-allow", "127.0.0.1/32",
		"--cluster-token-file", clusterTokenFile(t),
	}, extraArgs...)
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- dfdaemoncmd.Run(ctx, args, dfdaemoncmd.WithReady(func(mirror, _ net.Addr) { ready <- mirror }))
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil && ctx.Err() == nil {
				t.Errorf("dfdaemon exited: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("dfdaemon did not stop within 15s")
		}
	})
	select {
	case a := <-ready:
		return a.String()
	case err := <-done:
		t.Fatalf("dfdaemon did not start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("dfdaemon did not start within 30s")
	}
	return ""
}

// client pulls through a mirror as a runtime does: on a 401 it reads the
// challenge, gets a token from the realm with its own credentials and
// retries.
type client struct {
	reg        *registrytest.Registry
	user, pass string
	mu         sync.Mutex
	tokens     map[string]string // scope -> token
}

func (c *client) get(ctx context.Context, url, accept string) (*http.Response, error) {
	var scope string
	for attempt := 0; attempt < 2; attempt++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return nil, err
		}
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		c.mu.Lock()
		tok := c.tokens[scope]
		c.mu.Unlock()
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusUnauthorized || attempt == 1 || c.reg == nil {
			return resp, nil
		}
		challenge := resp.Header.Get("WWW-Authenticate")
		resp.Body.Close()
		if !strings.Contains(challenge, c.reg.Realm()) {
			return nil, fmt.Errorf("challenge %q does not name the registry's realm", challenge)
		}
		scope = challengeParam(challenge, "scope")
		tok, err = c.reg.Token(ctx, c.user, c.pass, scope)
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		if c.tokens == nil {
			c.tokens = map[string]string{}
		}
		c.tokens[scope] = tok
		c.mu.Unlock()
	}
	panic("unreachable")
}

func challengeParam(challenge, key string) string {
	i := strings.Index(challenge, key+`="`)
	if i < 0 {
		return ""
	}
	rest := challenge[i+len(key)+2:]
	if j := strings.IndexByte(rest, '"'); j >= 0 {
		return rest[:j]
	}
	return ""
}

// pull fetches the manifest by tag and every blob through mirror and checks
// each digest. It returns the HTTP status of the first failure, or 200.
func (c *client) pull(ctx context.Context, mirror string, img registrytest.Image) (int, error) {
	base := "http://" + mirror + "/v2/" + img.Repo
	resp, err := c.get(ctx, base+"/manifests/"+img.Tag, registrytest.MediaTypeManifest)
	if err != nil {
		return 0, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, nil
	}
	if digest.FromBytes(body) != img.Manifest {
		return 0, fmt.Errorf("manifest digest %s, want %s", digest.FromBytes(body), img.Manifest)
	}
	g, gctx := errgroup.WithContext(ctx)
	statuses := make([]int, len(img.Blobs()))
	for i, b := range img.Blobs() {
		g.Go(func() error {
			st, err := c.blob(gctx, mirror, img.Repo, b.Digest)
			statuses[i] = st
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	for _, st := range statuses {
		if st != http.StatusOK {
			return st, nil
		}
	}
	return http.StatusOK, nil
}

func (c *client) blob(ctx context.Context, mirror, repo string, d digest.Digest) (int, error) {
	resp, err := c.get(ctx, "http://"+mirror+"/v2/"+repo+"/blobs/"+d.String(), "")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, nil
	}
	v := digest.SHA256.Digester()
	if _, err := io.Copy(v.Hash(), resp.Body); err != nil {
		return 0, fmt.Errorf("blob %s: %w", d, err)
	}
	if v.Digest() != d {
		return 0, fmt.Errorf("blob %s: got %s", d, v.Digest())
	}
	return http.StatusOK, nil
}

// An image of three layers pulled through four dfdaemons at once: every
// blob is right, the registry sent each blob once, and manifests by tag
// reached the registry at most once per dfdaemon.
func TestMirrorFourDaemons(t *testing.T) {
	skipShort(t)
	t.Parallel()
	reg := registrytest.New(t)
	img, err := reg.PushRandomImage(t.Context(), "library/app", "1", 6*mib, 9*mib, 3*mib)
	require.NoError(t, err)
	reg.ResetStats()
	sn := startSupernode(t)

	const daemons, pullsPerDaemon = 4, 3
	var mirrors []string
	for range daemons {
		mirrors = append(mirrors, startDfdaemon(t, sn.addr, reg.URL.String()))
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	for _, m := range mirrors {
		for range pullsPerDaemon {
			g.Go(func() error {
				st, err := (&client{}).pull(gctx, m, img)
				if err == nil && st != http.StatusOK {
					err = fmt.Errorf("pull through %s: status %d", m, st)
				}
				return err
			})
		}
	}
	require.NoError(t, g.Wait())

	s := reg.Stats()
	for _, b := range img.Blobs() {
		require.Equal(t, 1, s.BlobGETs[b.Digest], "registry GETs of blob %s", b.Digest)
	}
	var imageBytes int64
	for _, b := range img.Blobs() {
		imageBytes += b.Size
	}
	require.Equal(t, imageBytes, s.BlobBytes, "the registry sent each blob exactly once")
	require.LessOrEqual(t, s.ManifestGETs["library/app:1"], daemons,
		"%d pulls of the tag reached the registry %d times", daemons*pullsPerDaemon, s.ManifestGETs["library/app:1"])
	t.Logf("registry: %d blob bytes for a %d-byte image pulled %d times; %d manifest GETs by tag",
		s.BlobBytes, imageBytes, daemons*pullsPerDaemon, s.ManifestGETs["library/app:1"])
}

// Behind token auth: challenges reach the client, which gets its own token;
// the registry still sends each blob once; and a client without
// credentials gets no private blob, neither from the dfdaemon that pulled it
// nor from another one that could fetch it from peers.
func TestMirrorTokenAuth(t *testing.T) {
	skipShort(t)
	t.Parallel()
	reg := registrytest.New(t, registrytest.WithTokenAuth(map[string]string{"alice": "alice-pass"}))
	img, err := reg.PushRandomImage(t.Context(), "private/app", "v1", 5*mib, 2*mib, 1*mib)
	require.NoError(t, err)
	reg.ResetStats()
	sn := startSupernode(t)
	a := startDfdaemon(t, sn.addr, reg.URL.String())
	b := startDfdaemon(t, sn.addr, reg.URL.String())

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	alice := &client{reg: reg, user: "alice", pass: "alice-pass"}
	st, err := alice.pull(ctx, a, img)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, st)
	st, err = (&client{reg: reg, user: "alice", pass: "alice-pass"}).pull(ctx, b, img)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, st)
	s := reg.Stats()
	for _, d := range img.Blobs() {
		require.Equal(t, 1, s.BlobGETs[d.Digest], "registry GETs of blob %s", d.Digest)
	}

	for _, m := range []string{a, b} {
		for _, d := range img.Layers {
			// No credentials at all: the upstream's challenge, no bytes.
			st, err := (&client{}).blob(ctx, m, img.Repo, d.Digest)
			require.NoError(t, err)
			require.Equal(t, http.StatusUnauthorized, st, "anonymous GET of a private blob via %s", m)
			// A token for nobody: still refused.
			st, err = (&client{reg: reg}).blob(ctx, m, img.Repo, d.Digest)
			require.NoError(t, err)
			require.Contains(t, []int{http.StatusUnauthorized, http.StatusForbidden}, st)
			// Wrong password: the realm refuses, so no token.
			_, err = (&client{reg: reg, user: "alice", pass: "nope"}).blob(ctx, m, img.Repo, d.Digest)
			require.Error(t, err)
		}
	}
}
