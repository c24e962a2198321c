package mirror

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/damselfly/damselfly/pkg/source/registrysource"
)

// headTimeout bounds one authorization HEAD to the upstream.
const headTimeout = 30 * time.Second

// maxAuthEntries bounds the authorization cache; older entries are swept
// when it is full.
const maxAuthEntries = 10000

// authKey names one confirmation: these credentials may read this blob of
// this repository on this upstream. The credentials are kept only as a hash.
type authKey struct {
	base, repo string
	digest     digest.Digest
	cred       [sha256.Size]byte
}

func (k authKey) String() string {
	return k.base + "\x00" + k.repo + "\x00" + k.digest.String() + "\x00" + hex.EncodeToString(k.cred[:])
}

type authResult struct {
	size int64
	at   time.Time
}

// How an authorization was decided, for metrics.
const (
	authUpstream = "upstream" // the upstream said yes just now
	authCached   = "cached"   // it said yes less than AuthTTL ago
	authGrace    = "grace"    // unreachable; it said yes less than AuthGrace ago
	authDenied   = "denied"   // it said no (401, 403, 404, ...)
	authFailed   = "failed"   // unreachable and no grace
)

// Authorizer confirms with an upstream registry that a client may read a
// blob, with the client's own credentials, and remembers the answer
// briefly. The mirror has one; NewAuthorizer makes others, for example one
// whose HTTP client enforces the forward proxy's outbound policy.
type Authorizer struct {
	cache  *authCache
	reg    *registrysource.Client
	checks *prometheus.CounterVec // nil: not counted
}

// NewAuthorizer returns an authorizer with the AuthTTL and AuthGrace of cfg
// (defaults applied) that asks upstreams through hc (nil: a default client
// without proxy).
func NewAuthorizer(cfg Config, hc *http.Client) *Authorizer {
	cfg = cfg.ApplyDefaults()
	if hc == nil {
		hc = defaultUpstreamClient()
	}
	return &Authorizer{
		cache: newAuthCache(cfg.AuthTTL, cfg.AuthGrace),
		reg:   registrysource.New(registrysource.WithHTTPClient(hc)),
	}
}

// Authorize confirms that the credentials in header (its Authorization,
// nothing else of it is used) may read blob d of repo on the upstream at
// base, and returns the blob's size (-1 when the upstream sends none). It
// asks the upstream with a HEAD unless the same credentials were confirmed
// for the blob less than AuthTTL ago; when the upstream cannot be reached
// or answers 429, a confirmation less than AuthGrace old still counts.
// Errors are the upstream's: a *registrysource.ResponseError for a definite
// no (401, 403, 404, ...) or a 429 without such a confirmation, anything
// else when it could not answer.
func (a *Authorizer) Authorize(ctx context.Context, base *url.URL, repo string, d digest.Digest, header http.Header) (int64, error) {
	auth := http.Header{}
	for _, v := range header.Values("Authorization") {
		auth.Add("Authorization", v)
	}
	key := authKey{base: base.String(), repo: repo, digest: d, cred: credHash(auth)}
	size, how, err := a.cache.check(ctx, key, func(hctx context.Context) (int64, error) {
		desc, err := a.reg.HeadBlob(hctx, base, repo, d, auth)
		return desc.Size, err
	})
	if a.checks != nil {
		a.checks.WithLabelValues(how).Inc()
	}
	return size, err
}

// authCache remembers which credentials the upstream let read which blob.
type authCache struct {
	ttl, grace time.Duration
	now        func() time.Time
	sf         singleflight.Group

	mu sync.Mutex
	m  map[authKey]authResult
}

func newAuthCache(ttl, grace time.Duration) *authCache {
	return &authCache{ttl: ttl, grace: grace, now: time.Now, m: make(map[authKey]authResult)}
}

// credHash hashes the Authorization header values: two requests share a
// confirmation only when they carry the same credentials (or none).
func credHash(h http.Header) [sha256.Size]byte {
	return sha256.Sum256([]byte(strings.Join(h.Values("Authorization"), "\n")))
}

// check answers whether key may be read, asking the upstream with head
// unless a recent confirmation exists. Concurrent checks of one key share
// one HEAD. head runs on a context detached from ctx (so one caller that
// hangs up does not fail the others) and bounded by headTimeout.
func (a *authCache) check(ctx context.Context, key authKey, head func(context.Context) (int64, error)) (int64, string, error) {
	now := a.now()
	a.mu.Lock()
	prev, ok := a.m[key]
	a.mu.Unlock()
	if ok && now.Sub(prev.at) < a.ttl {
		return prev.size, authCached, nil
	}
	ch := a.sf.DoChan(key.String(), func() (any, error) {
		hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), headTimeout)
		defer cancel()
		return head(hctx)
	})
	var res singleflight.Result
	select {
	case res = <-ch:
	case <-ctx.Done():
		return 0, authFailed, ctx.Err()
	}
	if res.Err == nil {
		size := res.Val.(int64)
		a.store(key, authResult{size: size, at: a.now()})
		return size, authUpstream, nil
	}
	if unreachable(res.Err) || throttled(res.Err) {
		// A 429 says nothing about access: like an outage, it leaves a
		// recent yes standing, and goes to the client (with Retry-After)
		// when there is none.
		if ok && a.grace > 0 && now.Sub(prev.at) < a.grace {
			return prev.size, authGrace, nil
		}
		return 0, authFailed, res.Err
	}
	// A definite no ends any grace at once.
	a.mu.Lock()
	delete(a.m, key)
	a.mu.Unlock()
	return 0, authDenied, res.Err
}

func (a *authCache) store(key authKey, r authResult) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.m[key]; !ok && len(a.m) >= maxAuthEntries {
		keep := max(a.ttl, a.grace)
		for k, v := range a.m {
			if r.at.Sub(v.at) >= keep {
				delete(a.m, k)
			}
		}
		for k := range a.m { // still full: drop arbitrary entries
			if len(a.m) < maxAuthEntries {
				break
			}
			delete(a.m, k)
		}
	}
	a.m[key] = r
}

// throttled reports whether the upstream answered 429 Too Many Requests.
func throttled(err error) bool {
	var re *registrysource.ResponseError
	return errors.As(err, &re) && re.StatusCode == http.StatusTooManyRequests
}

// unreachable reports whether err means the upstream could not answer (a
// network failure or a 5xx), as opposed to a definite answer.
func unreachable(err error) bool {
	var re *registrysource.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode >= 500
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return true
	}
	return !errors.Is(err, registrysource.ErrInvalid) && !errors.Is(err, registrysource.ErrDigestMismatch) &&
		!errors.Is(err, context.Canceled)
}
