package proxy

import (
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/damselfly/damselfly/pkg/bytesize"
)

func TestConfigDefaultsAreValid(t *testing.T) {
	t.Parallel()
	c := Config{}.ApplyDefaults()
	require.NoError(t, c.Validate())
	require.Equal(t, []int{443}, c.ConnectPorts)
	require.Equal(t, bytesize.Size(DefaultMaxHeaderBytes), c.MaxHeaderBytes)
	require.Equal(t, DefaultTunnelIdleTimeout, c.TunnelIdleTimeout)
	require.Equal(t, DefaultLeafValidity, c.Hijack.LeafValidity)
}

func TestConfigYAML(t *testing.T) {
	t.Parallel()
	const doc = `
rules:
  - regex: '^https://[^/]+/v2/.+/blobs/sha256:'
    useP2P: true
  - regex: '^http://files\.example\.com/(.*)$'
    redirect: 'https://mirror.example.com/$1'
hijack:
  caCert: /etc/damselfly/ca.crt
  caKey: /etc/damselfly/ca.key
  hosts: ['^registry-1\.docker\.io$']
outbound:
  allow: [127.0.0.1/32]
connectPorts: [443, 5000]
tunnelIdleTimeout: 2m
`
	var c Config
	require.NoError(t, yaml.Unmarshal([]byte(doc), &c))
	require.Equal(t, Rule{Regex: `^https://[^/]+/v2/.+/blobs/sha256:`, UseP2P: true}, c.Rules[0])
	require.Equal(t, "https://mirror.example.com/$1", c.Rules[1].Redirect)
	require.Equal(t, "/etc/damselfly/ca.key", c.Hijack.CAKey)
	require.Equal(t, []string{`^registry-1\.docker\.io$`}, c.Hijack.Hosts)
	require.Equal(t, []int{443, 5000}, c.ConnectPorts)
	require.Equal(t, 2*time.Minute, c.TunnelIdleTimeout)
	require.Equal(t, []string{"127.0.0.1/32"}, c.Outbound.Allow)
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	good := newTestCA(t, "good CA")
	other := newTestCA(t, "other CA")
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, data, 0o600))
		return p
	}
	garbage := write("garbage.pem", []byte("not a PEM file"))
	leaf := good.serverCert(t, "leaf.test")
	leafCert := write("leaf.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Certificate[0]}))
	leafKeyDER, err := x509.MarshalPKCS8PrivateKey(leaf.PrivateKey)
	require.NoError(t, err)
	leafKey := write("leaf.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: leafKeyDER}))
	hosts := []string{`^p2p\.test$`}
	expired := newTestCAValid(t, "expired CA", time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))

	tests := []struct {
		name  string
		cfg   Config
		wants []string // substrings of the error; none: valid
	}{
		{name: "rules and CA", cfg: Config{
			Rules:  []Rule{{Regex: `/blobs/`, UseP2P: true}, {Regex: `x`, Redirect: "mirror.test:8080"}, {Regex: `^http://a/(.*)$`, Redirect: "https://b/$1"}},
			Hijack: HijackConfig{CACert: good.certFile, CAKey: good.keyFile, Hosts: hosts},
		}},
		{name: "CA without hosts is loaded too", cfg: Config{Hijack: HijackConfig{CACert: good.certFile, CAKey: good.keyFile}}},
		{name: "empty regex", cfg: Config{Rules: []Rule{{UseP2P: true}}}, wants: []string{"rules[0]: regex is required"}},
		{name: "bad regex", cfg: Config{Rules: []Rule{{Regex: `(`}}}, wants: []string{"rules[0]: regex \"(\""}},
		{name: "bad redirect host", cfg: Config{Rules: []Rule{{Regex: `x`, Redirect: "a/b"}}}, wants: []string{"rules[0]: redirect \"a/b\""}},
		{name: "bad redirect port", cfg: Config{Rules: []Rule{{Regex: `x`, Redirect: "a:99999"}}}, wants: []string{"redirect \"a:99999\""}},
		{name: "bad redirect scheme", cfg: Config{Rules: []Rule{{Regex: `x`, Redirect: "ftp://a/$1"}}}, wants: []string{"must start with http:// or https://"}},
		{name: "hosts without CA", cfg: Config{Hijack: HijackConfig{Hosts: hosts}}, wants: []string{"caCert and caKey are both required"}},
		{name: "bad host regex", cfg: Config{Hijack: HijackConfig{CACert: good.certFile, CAKey: good.keyFile, Hosts: []string{`[`}}}, wants: []string{"hijack.hosts[0]"}},
		{name: "missing CA file", cfg: Config{Hijack: HijackConfig{CACert: filepath.Join(dir, "nope.crt"), CAKey: good.keyFile, Hosts: hosts}}, wants: []string{"caCert: open", "no such file"}},
		{name: "garbage CA", cfg: Config{Hijack: HijackConfig{CACert: garbage, CAKey: good.keyFile, Hosts: hosts}}, wants: []string{"failed to find any PEM data in certificate input"}},
		{name: "garbage key", cfg: Config{Hijack: HijackConfig{CACert: good.certFile, CAKey: garbage, Hosts: hosts}}, wants: []string{"failed to find any PEM data in key input"}},
		{name: "key of another CA", cfg: Config{Hijack: HijackConfig{CACert: good.certFile, CAKey: other.keyFile, Hosts: hosts}}, wants: []string{"private key does not match public key"}},
		{name: "certificate is not a CA", cfg: Config{Hijack: HijackConfig{CACert: leafCert, CAKey: leafKey, Hosts: hosts}}, wants: []string{`certificate "leaf.test" is not a CA`}},
		{name: "expired CA", cfg: Config{Hijack: HijackConfig{CACert: expired.certFile, CAKey: expired.keyFile, Hosts: hosts}}, wants: []string{"not valid now"}},
		{name: "ports, networks, sizes, durations", cfg: Config{
			ConnectPorts:   []int{0, 70000},
			Outbound:       OutboundConfig{Allow: []string{"10.0.0.0/33"}, Deny: []string{"non_sense"}},
			MaxHeaderBytes: 100,
			DialTimeout:    -time.Second,
			Hijack:         HijackConfig{LeafValidity: time.Second, CertCacheSize: -1},
		}, wants: []string{
			"connectPorts: 0 is not a port", "connectPorts: 70000 is not a port",
			`outbound.allow: "10.0.0.0/33"`, `outbound.deny: "non_sense"`,
			"maxHeaderBytes 100", "dialTimeout -1s", "hijack.leafValidity 1s", "hijack.certCacheSize -1",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := tt.cfg.ApplyDefaults()
			err := cfg.Validate()
			_, newErr := New(tt.cfg, newMemFetcher(nil))
			if len(tt.wants) == 0 {
				require.NoError(t, err)
				require.NoError(t, newErr)
				return
			}
			require.ErrorIs(t, err, ErrInvalid)
			require.ErrorIs(t, newErr, ErrInvalid)
			for _, w := range tt.wants {
				require.ErrorContains(t, err, w)
			}
		})
	}
}
