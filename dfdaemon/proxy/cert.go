package proxy

import (
	"container/list"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// ca is the user's certificate authority leaf certificates are signed with.
type ca struct {
	cert   *x509.Certificate
	signer crypto.Signer
}

// loadCA reads and checks the CA pair: both files PEM, the key matching the
// certificate, the certificate a CA allowed to sign certificates and valid
// now.
func loadCA(certFile, keyFile string) (*ca, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("caCert: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("caKey: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("caCert %s / caKey %s: %w", certFile, keyFile, err)
	}
	cert := pair.Leaf
	if cert == nil {
		if cert, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, fmt.Errorf("caCert %s: %w", certFile, err)
		}
	}
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return nil, fmt.Errorf("caCert %s: certificate %q is not a CA (basicConstraints CA:TRUE is required)", certFile, cert.Subject.CommonName)
	}
	if cert.KeyUsage != 0 && cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("caCert %s: key usage does not allow signing certificates (keyCertSign)", certFile)
	}
	now := time.Now()
	if now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
		return nil, fmt.Errorf("caCert %s: not valid now (valid %s to %s)", certFile,
			cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339))
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("caKey %s: key type %T cannot sign", keyFile, pair.PrivateKey)
	}
	return &ca{cert: cert, signer: signer}, nil
}

// leafMargin is how long before its expiry a cached leaf is replaced, so a
// handshake never gets a certificate about to expire.
func leafMargin(validity time.Duration) time.Duration { return validity / 4 }

// issue creates a leaf certificate for host (a DNS name or an IP address)
// with a fresh ECDSA P-256 key, valid from a little before now (for clock
// skew) for validity, but never past the CA's own expiry.
func (c *ca) issue(host string, validity time.Duration, now time.Time) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("leaf key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("leaf serial: %w", err)
	}
	notAfter := now.Add(validity)
	if notAfter.After(c.cert.NotAfter) {
		notAfter = c.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: host},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		tmpl.IPAddresses = append(tmpl.IPAddresses, ip.AsSlice())
	} else {
		tmpl.DNSNames = []string{host}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, key.Public(), c.signer)
	if err != nil {
		return nil, fmt.Errorf("sign leaf for %s: %w", host, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{
		Certificate: [][]byte{der, c.cert.Raw},
		PrivateKey:  key,
		Leaf:        leaf,
	}, nil
}

// certCache holds the leaf certificates issued so far, one per host, least
// recently used evicted beyond its size. Concurrent requests for one host
// share one signing.
type certCache struct {
	ca       *ca
	validity time.Duration
	size     int
	now      func() time.Time
	onIssue  func()

	group singleflight.Group

	mu    sync.Mutex
	lru   *list.List // of *certEntry, most recent first
	index map[string]*list.Element
}

type certEntry struct {
	host string
	cert *tls.Certificate
}

func newCertCache(c *ca, validity time.Duration, size int, now func() time.Time, onIssue func()) *certCache {
	return &certCache{
		ca: c, validity: validity, size: size, now: now, onIssue: onIssue,
		lru: list.New(), index: make(map[string]*list.Element),
	}
}

// get returns a leaf for host, issuing one if none is cached or the cached
// one is close to expiry.
func (cc *certCache) get(host string) (*tls.Certificate, error) {
	if host == "" {
		return nil, errors.New("no host name to issue a certificate for")
	}
	if cert := cc.lookup(host); cert != nil {
		return cert, nil
	}
	v, err, _ := cc.group.Do(host, func() (any, error) {
		if cert := cc.lookup(host); cert != nil {
			return cert, nil
		}
		cert, err := cc.ca.issue(host, cc.validity, cc.now())
		if err != nil {
			return nil, err
		}
		if cc.onIssue != nil {
			cc.onIssue()
		}
		cc.store(host, cert)
		return cert, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*tls.Certificate), nil
}

// lookup returns the cached leaf of host if it is not about to expire.
func (cc *certCache) lookup(host string) *tls.Certificate {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	el, ok := cc.index[host]
	if !ok {
		return nil
	}
	e := el.Value.(*certEntry)
	if cc.now().After(e.cert.Leaf.NotAfter.Add(-leafMargin(cc.validity))) {
		cc.lru.Remove(el)
		delete(cc.index, host)
		return nil
	}
	cc.lru.MoveToFront(el)
	return e.cert
}

func (cc *certCache) store(host string, cert *tls.Certificate) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	if el, ok := cc.index[host]; ok {
		el.Value.(*certEntry).cert = cert
		cc.lru.MoveToFront(el)
		return
	}
	cc.index[host] = cc.lru.PushFront(&certEntry{host: host, cert: cert})
	for cc.lru.Len() > cc.size {
		last := cc.lru.Back()
		cc.lru.Remove(last)
		delete(cc.index, last.Value.(*certEntry).host)
	}
}

// len returns how many leaves are cached.
func (cc *certCache) len() int {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.lru.Len()
}
