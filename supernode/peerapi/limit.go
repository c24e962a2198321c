package peerapi

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/damselfly/damselfly/pkg/schedapi"
)

// Config bounds what one client address may ask of the peer API. The zero
// value, after ApplyDefaults, is a working configuration.
type Config struct {
	// RegisterRate is the registrations per second one client address may
	// make, with bursts of RegisterBurst. Each registration may create a
	// task and start a source fetch.
	RegisterRate  float64 `yaml:"registerRate"`
	RegisterBurst int     `yaml:"registerBurst"`
	// PollRate is the piece polls per second one client address may make,
	// with bursts of PollBurst. A node polls once per running download
	// every few seconds, and again at once when it was handed pieces.
	PollRate  float64 `yaml:"pollRate"`
	PollBurst int     `yaml:"pollBurst"`
}

// Defaults of Config.
const (
	DefaultRegisterRate  = 50
	DefaultRegisterBurst = 200
	DefaultPollRate      = 500
	DefaultPollBurst     = 1000
)

// ApplyDefaults returns c with unset fields set to their defaults.
func (c Config) ApplyDefaults() Config {
	if c.RegisterRate == 0 {
		c.RegisterRate = DefaultRegisterRate
	}
	if c.RegisterBurst == 0 {
		c.RegisterBurst = DefaultRegisterBurst
	}
	if c.PollRate == 0 {
		c.PollRate = DefaultPollRate
	}
	if c.PollBurst == 0 {
		c.PollBurst = DefaultPollBurst
	}
	return c
}

// Validate reports every value out of range, each naming its key under
// peerAPI.
func (c Config) Validate() error {
	var errs []error
	if c.RegisterRate <= 0 {
		errs = append(errs, fmt.Errorf("peerAPI.registerRate %v: must be positive", c.RegisterRate))
	}
	if c.RegisterBurst < 1 {
		errs = append(errs, fmt.Errorf("peerAPI.registerBurst %d: must be at least 1", c.RegisterBurst))
	}
	if c.PollRate <= 0 {
		errs = append(errs, fmt.Errorf("peerAPI.pollRate %v: must be positive", c.PollRate))
	}
	if c.PollBurst < 1 {
		errs = append(errs, fmt.Errorf("peerAPI.pollBurst %d: must be at least 1", c.PollBurst))
	}
	return errors.Join(errs...)
}

// maxClients bounds the client addresses remembered at once; idleClient is
// how long an address nobody heard from is remembered.
const (
	maxClients = 1 << 16
	idleClient = time.Minute
)

// clientLimits keeps one token bucket per client IP.
type clientLimits struct {
	limit rate.Limit
	burst int

	mu      sync.Mutex
	clients map[string]*client
}

type client struct {
	lim  *rate.Limiter
	seen time.Time
}

func newClientLimits(perSec float64, burst int) *clientLimits {
	return &clientLimits{limit: rate.Limit(perSec), burst: burst, clients: make(map[string]*client)}
}

// allow takes a token for r's client address, or says how long until one
// is available.
func (l *clientLimits) allow(r *http.Request, now time.Time) (bool, time.Duration) {
	ip, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		ip = r.RemoteAddr
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.clients[ip]
	if c == nil {
		if len(l.clients) >= maxClients {
			l.forgetIdle(now)
		}
		c = &client{lim: rate.NewLimiter(l.limit, l.burst)}
		l.clients[ip] = c
	}
	c.seen = now
	res := c.lim.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return false, d
	}
	return true, 0
}

// forgetIdle drops the addresses not heard from for idleClient; if every one
// is recent, it drops them all (a flood of addresses; each starts afresh).
func (l *clientLimits) forgetIdle(now time.Time) {
	for ip, c := range l.clients {
		if now.Sub(c.seen) > idleClient {
			delete(l.clients, ip)
		}
	}
	if len(l.clients) >= maxClients {
		clear(l.clients)
	}
}

// limited wraps h so that each client address gets l's rate; a client over
// it is answered 429 with Retry-After, and h is not called.
func (s *Server) limited(l *clientLimits, h handlerFunc) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if ok, wait := l.allow(r, time.Now()); !ok {
			secs := max(1, int((wait+time.Second-1)/time.Second))
			w.Header().Set("Retry-After", strconv.Itoa(secs))
			return &apiError{status: http.StatusTooManyRequests, code: schedapi.CodeUnavailable,
				msg: fmt.Sprintf("too many requests from this address: try again in %ds", secs)}
		}
		return h(w, r)
	}
}
