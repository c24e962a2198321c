package cmd

import (
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/damselfly/damselfly/pkg/registrytest"
)

func TestMirrorFollowsTheSourcePolicy(t *testing.T) {
	t.Parallel()
	reg := registrytest.New(t)
	_, err := reg.PushRandomImage(t.Context(), "team/app", "v1", 1000)
	require.NoError(t, err)
	sn := startSupernode(t)

	// No --source-allow: the registry on loopback is out of reach.
	d := startDaemon(t, "--node", sn, "--registry", reg.URL.String())
	reg.ResetStats()
	resp, _ := get(t, plainClient, "http://"+d.addr+"/v2/team/app/manifests/v1", nil)
	require.NotEqual(t, http.StatusOK, resp.StatusCode)
	require.Zero(t, reg.Stats().Requests, "nothing reached the registry")

	// Only 127.0.0.2 is allowed: a redirect from there to the registry on
	// 127.0.0.1 is refused at the hop.
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("no 127.0.0.2 on this machine: %v", err)
	}
	redirector := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, reg.URL.String()+r.URL.RequestURI(), http.StatusTemporaryRedirect)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = redirector.Serve(ln) }()
	t.Cleanup(func() { _ = redirector.Close() })
	d2 := startDaemon(t, "--node", sn, "--registry", "http://"+ln.Addr().String(), "--source-allow", "127.0.0.2")
	resp, _ = get(t, plainClient, "http://"+d2.addr+"/v2/team/app/manifests/v1", nil)
	require.NotEqual(t, http.StatusOK, resp.StatusCode)
	require.Zero(t, reg.Stats().Requests, "the redirect target was never contacted")

	// Allowed explicitly, the same pull works.
	d3 := startDaemon(t, "--node", sn, "--registry", reg.URL.String(), "--source-allow", "10.0.0.0/8,127.0.0.1/32")
	resp, _ = get(t, plainClient, "http://"+d3.addr+"/v2/team/app/manifests/v1", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

func TestPolicyFlagsAndConfig(t *testing.T) {
	t.Parallel()
	p := writeFile(t, "source:\n  allow: [registry.internal]\npeerPolicy:\n  deny: [10.9.0.0/16]\n")
	var f flags
	fset := newFlagSet(&f, nil)
	require.NoError(t, fset.Parse([]string{"--config", p, "--source-allow", "127.0.0.1/32,::1", "--source-deny", "10.0.0.0/8",
		"--peer-allow", "127.0.0.1/32", "--peer-deny", "10.8.0.1"}))
	cfg, err := buildConfig(fset, &f)
	require.NoError(t, err)
	require.Equal(t, []string{"registry.internal", "127.0.0.1/32", "::1"}, cfg.Source.Allow)
	require.Equal(t, []string{"10.0.0.0/8"}, cfg.Source.Deny)
	require.Equal(t, []string{"127.0.0.1/32"}, cfg.PeerPolicy.Allow)
	require.Equal(t, []string{"10.9.0.0/16", "10.8.0.1"}, cfg.PeerPolicy.Deny)

	bad := writeFile(t, "source:\n  deny: [10.0.0.0/33]\npeerPolicy:\n  allow: [bad_host]\n")
	f = flags{}
	fset = newFlagSet(&f, nil)
	require.NoError(t, fset.Parse([]string{"--config", bad}))
	_, err = buildConfig(fset, &f)
	require.ErrorContains(t, err, "source.deny")
	require.ErrorContains(t, err, "peerPolicy.allow")
}
