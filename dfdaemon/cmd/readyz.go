package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"
)

// Readiness: GET /readyz on the mirror's listener answers whether at least
// one supernode answers, so that an orchestrator (or an operator with curl)
// sees a dfdaemon whose pulls would all go to the origin. /healthz stays
// liveness: the process runs.
//
//   - A check asks GET <supernode>/healthz of every configured supernode at
//     once, each bounded by readyProbeTimeout; the first 200 makes the node
//     ready. Health is open on the supernode: no credential is sent.
//   - Its answer is kept for readyTTL, and concurrent requests share one
//     check, so /readyz costs the supernodes at most one probe each per
//     readyTTL however often it is asked, and a request waits at most
//     readyProbeTimeout.
//   - 200 "ready: supernode <url> answers"; 503 "not ready: no supernode
//     answers: <url>: <reason>; ..." naming every address tried.
const (
	readyTTL          = 3 * time.Second
	readyProbeTimeout = time.Second
)

// readiness checks and remembers whether a supernode answers.
type readiness struct {
	supernodes []string // base URLs, http://host:port
	hc         *http.Client
	now        func() time.Time
	sf         singleflight.Group

	mu      sync.Mutex
	checked time.Time
	last    readyResult
}

type readyResult struct {
	ok     bool
	detail string
}

func newReadiness(supernodes []string) *readiness {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil // this node may be the proxy the environment names
	tr.MaxIdleConnsPerHost = 1
	return &readiness{supernodes: supernodes, hc: &http.Client{Transport: tr, Timeout: readyProbeTimeout}, now: time.Now}
}

// check returns the remembered answer, or probes the supernodes when it is
// older than readyTTL. The probe runs detached from ctx (the others waiting
// for it keep their answer); ctx only bounds the wait.
func (r *readiness) check(ctx context.Context) readyResult {
	r.mu.Lock()
	if !r.checked.IsZero() && r.now().Sub(r.checked) < readyTTL {
		res := r.last
		r.mu.Unlock()
		return res
	}
	r.mu.Unlock()
	ch := r.sf.DoChan("", func() (any, error) {
		res := r.probe(context.WithoutCancel(ctx))
		r.mu.Lock()
		r.checked, r.last = r.now(), res
		r.mu.Unlock()
		return res, nil
	})
	select {
	case v := <-ch:
		return v.Val.(readyResult)
	case <-ctx.Done():
		return readyResult{detail: "not ready: the check did not finish: " + ctx.Err().Error()}
	}
}

// probe asks every supernode's /healthz at once; the first to answer 200
// decides.
func (r *readiness) probe(ctx context.Context) readyResult {
	ctx, cancel := context.WithTimeout(ctx, readyProbeTimeout)
	defer cancel()
	type answer struct {
		i   int
		err error
	}
	answers := make(chan answer, len(r.supernodes)) // buffered: late probes never block
	for i, n := range r.supernodes {
		go func() { answers <- answer{i, r.probeOne(ctx, n)} }()
	}
	reasons := make([]string, len(r.supernodes))
	for range r.supernodes {
		a := <-answers
		if a.err == nil {
			return readyResult{ok: true, detail: "ready: supernode " + r.supernodes[a.i] + " answers"}
		}
		reasons[a.i] = r.supernodes[a.i] + ": " + a.err.Error()
	}
	return readyResult{detail: "not ready: no supernode answers (--node): " + strings.Join(reasons, "; ")}
}

func (r *readiness) probeOne(ctx context.Context, base string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/healthz", nil)
	if err != nil {
		return err
	}
	resp, err := r.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("no answer within %s", readyProbeTimeout)
		}
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the address is named once, by the caller
		}
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/healthz answered %d", resp.StatusCode)
	}
	return nil
}

// ServeHTTP answers GET /readyz.
func (r *readiness) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	res := r.check(req.Context())
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if !res.ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_, _ = io.WriteString(w, res.detail+"\n")
}

// warnIfNone checks the supernodes once at start and logs a warning naming
// the addresses tried when none answers. dfdaemon runs either way: blobs
// then come from their origins until a supernode answers.
// The probe is bounded by ctx (it does not outlive Run) and its answer is
// what /readyz says first.
func (r *readiness) warnIfNone(ctx context.Context, logger *zap.Logger) {
	res := r.probe(ctx)
	if ctx.Err() != nil {
		return
	}
	r.mu.Lock()
	r.checked, r.last = r.now(), res
	r.mu.Unlock()
	if !res.ok {
		logger.Warn("no supernode answers; pulls go to the origin until one does (check --node, and GET /readyz)",
			zap.Strings("supernodes", r.supernodes), zap.String("reason", res.detail))
	}
}
