// Package schedclient is the typed HTTP client of the peer API described in
// pkg/schedapi: register for a task, long-poll piece assignments, report
// piece results, leave, heartbeat.
//
// A Client knows one or more supernodes. Calls about a task go to the
// supernode that owns it by rendezvous (highest random weight) hashing of the
// task ID over the list, failing over to the next one in that order when a
// supernode cannot be reached. A task stays with the supernode it was
// registered on.
//
// Error contract: a non-2xx answer is an *APIError; errors.Is matches it
// against ErrTaskNotFound, ErrPeerNotFound, ErrTaskFailed, ErrInvalid and
// ErrUnavailable and ErrUnauthenticated by its code. A supernode that cannot be reached (dial,
// connection reset, timeout before an answer) yields an error wrapping
// ErrUnreachable. Idempotent calls are retried a bounded number of times on
// connection errors and 503 answers.
//
// The Header of a RegisterRequest carries source credentials: the client
// never logs request bodies.
package schedclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/backoff"
	"github.com/damselfly/damselfly/pkg/clusterauth"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/taskid"
)

// Default limits of a Client.
const (
	// DefaultCallTimeout bounds one HTTP exchange (a pieces long poll gets
	// its wait on top).
	DefaultCallTimeout = 15 * time.Second
	// DefaultAttempts is how many rounds over the supernode list an
	// idempotent call makes before giving up.
	DefaultAttempts = 3
	// DefaultBackoff is the pause before the second round; it doubles after,
	// each pause drawn from its upper half (Jitter).
	DefaultBackoff = 100 * time.Millisecond
	// maxResponseBytes bounds a response body.
	maxResponseBytes = 4 << 20
)

// Client talks to a list of supernodes. It is safe for concurrent use.
type Client struct {
	supernodes  []string // base URLs, "http://host:port"
	keys        clusterauth.Keys
	httpClient  *http.Client
	logger      *zap.Logger
	callTimeout time.Duration
	attempts    int
	backoff     time.Duration

	mu     sync.Mutex
	sticky map[string]string // task ID -> base URL it was registered on
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient sets the HTTP client (default: one that ignores proxy
// environment variables, since supernodes are reached directly).
func WithHTTPClient(hc *http.Client) Option {
	return func(c *Client) {
		if hc != nil {
			c.httpClient = hc
		}
	}
}

// WithLogger sets the logger (default: no-op).
func WithLogger(l *zap.Logger) Option {
	return func(c *Client) {
		if l != nil {
			c.logger = l
		}
	}
}

// WithClusterKeys sets the cluster token sent on every call. Without it
// every supernode answers ErrUnauthenticated.
func WithClusterKeys(k clusterauth.Keys) Option {
	return func(c *Client) { c.keys = k }
}

// WithRetry sets how many rounds over the supernode list an idempotent call
// makes (at least 1) and the first pause between rounds.
func WithRetry(attempts int, backoff time.Duration) Option {
	return func(c *Client) {
		if attempts >= 1 {
			c.attempts = attempts
		}
		if backoff >= 0 {
			c.backoff = backoff
		}
	}
}

// New returns a client of the supernodes at supernodes (host:port, or an http://
// base URL).
func New(supernodes []string, opts ...Option) (*Client, error) {
	if len(supernodes) == 0 {
		return nil, errors.New("schedclient: no supernode given")
	}
	c := &Client{
		logger:      zap.NewNop(),
		callTimeout: DefaultCallTimeout,
		attempts:    DefaultAttempts,
		backoff:     DefaultBackoff,
		sticky:      make(map[string]string),
	}
	for _, n := range supernodes {
		base, err := baseURL(n)
		if err != nil {
			return nil, fmt.Errorf("schedclient: %w", err)
		}
		if !slices.Contains(c.supernodes, base) {
			c.supernodes = append(c.supernodes, base)
		}
	}
	for _, o := range opts {
		o(c)
	}
	if c.httpClient == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.Proxy = nil
		c.httpClient = &http.Client{Transport: tr}
	}
	return c, nil
}

func baseURL(node string) (string, error) {
	node = strings.TrimSpace(node)
	if strings.Contains(node, "://") {
		u, err := url.Parse(node)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return "", fmt.Errorf("supernode %q: want host:port or an http(s) URL", node)
		}
		return u.Scheme + "://" + u.Host, nil
	}
	host, port, err := net.SplitHostPort(node)
	if err != nil {
		return "", fmt.Errorf("supernode %q: want host:port", node)
	}
	if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
		return "", fmt.Errorf("supernode %q: bad port", node)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port), nil
}

// Supernodes returns the supernodes' base URLs, in the order given.
func (c *Client) Supernodes() []string { return slices.Clone(c.supernodes) }

// ClusterKeys returns the cluster token(s) the client sends: a peer presents
// the same ones to the other members' upload servers.
func (c *Client) ClusterKeys() clusterauth.Keys { return c.keys }

// Register joins the peer to a task, creating the task on the supernode
// when it is new. Registering twice is harmless, so the call is retried.
func (c *Client) Register(ctx context.Context, req schedapi.RegisterRequest) (schedapi.RegisterResponse, error) {
	var resp schedapi.RegisterResponse
	body, err := json.Marshal(req)
	if err != nil {
		return resp, fmt.Errorf("register: %w", err)
	}
	node, err := c.do(ctx, call{
		name:       "register",
		method:     http.MethodPost,
		path:       schedapi.RegisterPath(),
		body:       body,
		nodes:      c.nodeFor(routeKey(req)),
		idempotent: true,
		out:        &resp,
	})
	if err != nil {
		return resp, err
	}
	if resp.TaskID != "" {
		c.mu.Lock()
		c.sticky[resp.TaskID] = node
		c.mu.Unlock()
	}
	return resp, nil
}

// Pieces long-polls for at most max assignments, waiting up to wait
// (bounded by schedapi.MaxWait) when there are none. want names the pieces
// to assign first and caps the others (schedapi.NoWant: any piece).
func (c *Client) Pieces(ctx context.Context, taskID taskid.ID, peerID string, limit int, wait time.Duration, want schedapi.Want) (schedapi.PiecesResponse, error) {
	var resp schedapi.PiecesResponse
	if err := checkPeerID(peerID); err != nil {
		return resp, fmt.Errorf("pieces: %w", err)
	}
	wait = min(max(wait, 0), schedapi.MaxWait)
	q, err := pollQuery(limit, want)
	if err != nil {
		return resp, fmt.Errorf("pieces: %w", err)
	}
	q.Set("wait", wait.String())
	_, err = c.do(ctx, call{
		name:       "pieces",
		method:     http.MethodGet,
		path:       schedapi.PiecesPath(taskID.String(), peerID) + "?" + q.Encode(),
		nodes:      c.nodeFor(taskID.String()),
		idempotent: true,
		extra:      wait,
		out:        &resp,
	})
	return resp, err
}

// Want changes what the peer's parked polls of a task ask for: at most
// limit assignments, want's pieces first (schedapi.RouteWant). It is
// idempotent.
func (c *Client) Want(ctx context.Context, taskID taskid.ID, peerID string, limit int, want schedapi.Want) error {
	if err := checkPeerID(peerID); err != nil {
		return fmt.Errorf("want: %w", err)
	}
	q, err := pollQuery(limit, want)
	if err != nil {
		return fmt.Errorf("want: %w", err)
	}
	_, err = c.do(ctx, call{
		name:       "want",
		method:     http.MethodPut,
		path:       schedapi.WantPath(taskID.String(), peerID) + "?" + q.Encode(),
		nodes:      c.nodeFor(taskID.String()),
		idempotent: true,
	})
	return err
}

// pollQuery is the query of a poll or a want update.
func pollQuery(limit int, want schedapi.Want) (url.Values, error) {
	q := url.Values{}
	q.Set("max", strconv.Itoa(min(max(limit, 1), schedapi.MaxAssignments)))
	if len(want.Pieces) > 0 {
		if !want.Valid() {
			return nil, fmt.Errorf("want %v: %w", want.Pieces, ErrInvalid)
		}
		q.Set(schedapi.QueryWant, schedapi.FormatWant(want.Pieces))
	}
	if want.Background >= 0 {
		q.Set(schedapi.QueryBackground, strconv.Itoa(want.Background))
	}
	return q, nil
}

// Report sends piece results. It is not idempotent (results are counted), so
// it is only retried when the request cannot have reached a supernode.
func (c *Client) Report(ctx context.Context, taskID taskid.ID, peerID string, results []schedapi.PieceResult) error {
	if err := checkPeerID(peerID); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	if len(results) == 0 {
		return nil
	}
	body, err := json.Marshal(schedapi.ReportRequest{Results: results})
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	_, err = c.do(ctx, call{
		name:   "report",
		method: http.MethodPost,
		path:   schedapi.ReportPath(taskID.String(), peerID),
		body:   body,
		nodes:  c.nodeFor(taskID.String()),
	})
	return err
}

// Leave tells the supernode the peer no longer serves the task.
func (c *Client) Leave(ctx context.Context, taskID taskid.ID, peerID string) error {
	if err := checkPeerID(peerID); err != nil {
		return fmt.Errorf("leave: %w", err)
	}
	_, err := c.do(ctx, call{
		name:       "leave",
		method:     http.MethodDelete,
		path:       schedapi.LeavePath(taskID.String(), peerID),
		nodes:      c.nodeFor(taskID.String()),
		idempotent: true,
	})
	if err == nil || errors.Is(err, ErrTaskNotFound) || errors.Is(err, ErrPeerNotFound) {
		c.mu.Lock()
		delete(c.sticky, taskID.String())
		c.mu.Unlock()
	}
	return err
}

// Heartbeat keeps the peer alive in the tasks of req. With several
// supernodes each gets the tasks it owns. The tasks of a supernode that
// cannot be reached go to the next supernode in their order, which answers
// them unknown if they have not moved there yet: the caller then registers
// them again, and the task continues on that supernode. The answer merges
// the unknown tasks of every supernode that answered; if none did, the
// error wraps ErrUnreachable.
func (c *Client) Heartbeat(ctx context.Context, peerID string, req schedapi.HeartbeatRequest) (schedapi.HeartbeatResponse, error) {
	var out schedapi.HeartbeatResponse
	if err := checkPeerID(peerID); err != nil {
		return out, fmt.Errorf("heartbeat: %w", err)
	}
	down := map[string]bool{}
	pending := slices.Clone(req.Tasks)
	var errs []error
	answered := false
	// Every round either ends or marks one more node down.
	for round := 0; round <= len(c.supernodes); round++ {
		groups, order := c.heartbeatGroups(pending, peerID, down)
		if len(order) == 0 {
			break
		}
		pending = nil
		for _, n := range order {
			body, err := json.Marshal(schedapi.HeartbeatRequest{Addr: req.Addr, Tasks: groups[n]})
			if err != nil {
				return out, fmt.Errorf("heartbeat: %w", err)
			}
			var resp schedapi.HeartbeatResponse
			_, err = c.do(ctx, call{
				name:       "heartbeat",
				method:     http.MethodPost,
				path:       schedapi.HeartbeatPath(peerID),
				body:       body,
				nodes:      []string{n},
				idempotent: true,
				out:        &resp,
			})
			if err != nil {
				if ctx.Err() != nil {
					return out, err
				}
				errs = append(errs, err)
				if errors.Is(err, ErrUnreachable) {
					down[n] = true
					pending = append(pending, groups[n]...)
				}
				continue
			}
			answered = true
			out.Unknown = append(out.Unknown, resp.Unknown...)
		}
		if len(pending) == 0 {
			break
		}
	}
	if !answered {
		return out, errors.Join(errs...)
	}
	if len(errs) > 0 {
		c.logger.Warn("heartbeat partly failed", zap.String("peer", peerID), zap.Error(errors.Join(errs...)))
	}
	return out, nil
}

// heartbeatGroups assigns each task to the first node of its order that is
// not down. With no task at all, the peer still heartbeats one node. Tasks
// whose every node is down are left out.
func (c *Client) heartbeatGroups(tasks []string, peerID string, down map[string]bool) (map[string][]string, []string) {
	groups := map[string][]string{}
	var order []string
	add := func(n, task string) {
		if _, ok := groups[n]; !ok {
			order = append(order, n)
		}
		if task != "" {
			groups[n] = append(groups[n], task)
		}
	}
	for _, t := range tasks {
		for _, n := range c.nodeFor(t) {
			if !down[n] {
				add(n, t)
				break
			}
		}
	}
	if len(tasks) == 0 && len(down) == 0 {
		add(c.nodeFor(peerID)[0], "")
	}
	return groups, order
}

// checkPeerID refuses a peer ID the supernode would: the task ID is a
// taskid.ID, valid by construction.
func checkPeerID(peerID string) error {
	if err := schedapi.ValidatePeerID(peerID); err != nil {
		return fmt.Errorf("%w: %w", err, ErrInvalid)
	}
	return nil
}

type call struct {
	name       string
	method     string
	path       string
	body       []byte
	nodes      []string
	idempotent bool
	extra      time.Duration // added to the call timeout (long polls)
	out        any
}

// do runs one call, trying the nodes in order, for up to c.attempts rounds.
// It returns the node that answered.
func (c *Client) do(ctx context.Context, cl call) (string, error) {
	var lastErr error
	bo := backoff.Backoff{Min: c.backoff, Max: c.backoff << c.attempts}
	for round := range c.attempts {
		if round > 0 {
			wait := bo.Next()
			if ae := (*APIError)(nil); errors.As(lastErr, &ae) && ae.RetryAfter > wait {
				// The supernode said when: no sooner.
				wait = backoff.Jitter(ae.RetryAfter) + ae.RetryAfter/2
			}
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return "", fmt.Errorf("%s: %w", cl.name, errors.Join(ctx.Err(), lastErr))
			case <-t.C:
			}
		}
		for _, node := range cl.nodes {
			err := c.once(ctx, node, cl)
			if err == nil {
				return node, nil
			}
			lastErr = err
			if ctx.Err() != nil {
				return "", fmt.Errorf("%s: %w", cl.name, err)
			}
			var ae *APIError
			switch {
			case errors.As(err, &ae):
				// An answer from a supernode: only 503 is worth another try.
				if !errors.Is(ae, ErrUnavailable) || !cl.idempotent {
					return "", fmt.Errorf("%s: %w", cl.name, err)
				}
			case notSent(err):
				// Never reached the node: safe to try the next one.
			case !cl.idempotent:
				return "", fmt.Errorf("%s: %w", cl.name, err)
			}
			c.logger.Debug("supernode call failed", zap.String("call", cl.name), zap.String("node", node), zap.Error(err))
		}
	}
	return "", fmt.Errorf("%s: %w", cl.name, lastErr)
}

func (c *Client) once(parent context.Context, node string, cl call) error {
	ctx, cancel := context.WithTimeout(parent, c.callTimeout+cl.extra)
	defer cancel()
	var body io.Reader
	if cl.body != nil {
		body = bytes.NewReader(cl.body)
	}
	req, err := http.NewRequestWithContext(ctx, cl.method, node+cl.path, body)
	if err != nil {
		return err
	}
	if cl.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	c.keys.Set(req.Header)
	resp, err := c.httpClient.Do(req)
	if err != nil {
		if parent.Err() != nil {
			return err
		}
		return connError(node, err)
	}
	defer resp.Body.Close()
	lr := io.LimitReader(resp.Body, maxResponseBytes)
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		data, _ := io.ReadAll(lr)
		err := decodeAPIError(resp.StatusCode, data)
		if secs, perr := strconv.Atoi(resp.Header.Get("Retry-After")); perr == nil && secs > 0 {
			err.RetryAfter = time.Duration(min(secs, 3600)) * time.Second
		}
		return err
	}
	if cl.out == nil || resp.StatusCode == http.StatusNoContent {
		_, _ = io.Copy(io.Discard, lr)
		return nil
	}
	if err := json.NewDecoder(lr).Decode(cl.out); err != nil {
		if parent.Err() != nil {
			return err
		}
		if ctx.Err() != nil {
			return connError(node, err)
		}
		return fmt.Errorf("decode answer of %s: %w", hostOf(node), err)
	}
	return nil
}
