// Package preheat has the supernode's CDN fetch content before anyone asks
// for it: every layer (and the config) of an image, one file, or one file
// of a torrent (a magnet link or a torrent+http(s) URL, which the CDN
// fetches as a BitTorrent client).
//
// A preheat is created with Create, which checks the request and returns at
// once with the preheat's ID; the work runs in the background on a context
// detached from the request, bounded by a timeout. For an image the reference
// is resolved (index -> the platform's manifest -> config and layers) with the
// request's credentials, or else the configured ones for that registry, and
// each blob is handed to the CDN as a digest task (TaskID = the blob digest,
// URL = its /v2/ blob URL, Header = the Authorization the resolver obtained).
// The preheat then follows each task until it succeeds or fails. Get returns
// the progress.
//
// Credentials live only in memory for the run: they are never logged, never
// part of a Status, never written anywhere. Records are kept in memory,
// bounded; the oldest finished ones are dropped first.
package preheat

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"go.uber.org/zap"

	"github.com/damselfly/damselfly/pkg/btlink"
	"github.com/damselfly/damselfly/pkg/redact"
	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
	"github.com/damselfly/damselfly/pkg/taskid"
	"github.com/damselfly/damselfly/supernode/scheduler"
	"github.com/damselfly/damselfly/supernode/task"
)

var (
	// ErrInvalid: a malformed preheat request.
	ErrInvalid = errors.New("invalid preheat request")
	// ErrNotFound: no preheat has that ID (or it was dropped).
	ErrNotFound = errors.New("preheat not found")
	// ErrClosed: the preheater has stopped.
	ErrClosed = errors.New("preheat stopped")
)

// Request types.
const (
	TypeImage   = "image"
	TypeFile    = "file"
	TypeTorrent = "torrent"
)

// State of a preheat or of one of its layers.
type State string

// States.
const (
	StatePending   State = "pending" // a layer not handed to the CDN yet
	StateRunning   State = "running"
	StateSucceeded State = "succeeded"
	StateFailed    State = "failed"
	StateSkipped   State = "skipped" // a non-distributable layer
)

const (
	defaultMaxRecords       = 1000
	defaultLayerConcurrency = 4
	defaultMaxRunning       = 8
	minPoll                 = 20 * time.Millisecond
	maxPoll                 = time.Second
	maxHeaders              = 64
)

// Request asks for a preheat.
type Request struct {
	// Type is "image", "file" or "torrent".
	Type string `json:"type"`
	// URL is the image reference ("host[:port]/repo:tag", "repo@sha256:...")
	// for an image, the http(s) URL for a file, the magnet link
	// ("magnet:?xt=urn:btih:…") or torrent file URL ("torrent+https://…")
	// for a torrent.
	URL string `json:"url"`
	// File is the file of a torrent to fetch, as the torrent lists it
	// (schedapi.ValidateFile); empty for a torrent of one file (a
	// multi-file torrent without it fails, its error listing the files).
	// Torrents only.
	File string `json:"file,omitempty"`
	// Platform picks the manifest of an index: "os/arch[/variant]"
	// (default linux on the supernode's architecture). Images only.
	Platform string `json:"platform,omitempty"`
	// Username, Password or Token authenticate to the registry; none: the
	// configured credentials of that registry, if any. Images only.
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	Token    string `json:"token,omitempty"`
	// Digest is the file's expected sha256 digest; with it the file is a
	// digest task. Files and torrents.
	Digest string `json:"digest,omitempty"`
	// Headers are sent to the file's source (a torrent's: to the server of
	// its torrent file). Files and torrents.
	Headers map[string]string `json:"headers,omitempty"`
	// Insecure speaks plain http to this image's registry, as if it were
	// listed in preheat.insecureRegistries (--preheat-insecure-registry).
	// Images only.
	Insecure bool `json:"insecure,omitempty"`
}

// Status is a preheat's progress.
type Status struct {
	ID    string `json:"id"`
	Type  string `json:"type"`
	State State  `json:"state"`
	Error string `json:"error,omitempty"`
	// Image is the resolved reference, host/repo:tag or host/repo@digest.
	Image string `json:"image,omitempty"`
	// URL is a file's URL without user info or query, a magnet link's
	// info-hash and name (redact.URL).
	URL string `json:"url,omitempty"`
	// File is the torrent's file.
	File     string `json:"file,omitempty"`
	Platform string `json:"platform,omitempty"`
	// Manifest is the image manifest's digest, once resolved.
	Manifest digest.Digest `json:"manifest,omitempty"`
	// Layers are the blobs fetched: the image config first, then the layers
	// (or the one file).
	Layers     []Layer    `json:"layers"`
	CreatedAt  time.Time  `json:"createdAt"`
	FinishedAt *time.Time `json:"finishedAt,omitempty"`
}

// Layer is one blob of a preheat and its CDN task.
type Layer struct {
	Digest     digest.Digest `json:"digest,omitempty"`
	TaskID     taskid.ID     `json:"taskId"`
	MediaType  string        `json:"mediaType,omitempty"`
	Size       int64         `json:"size"`
	State      State         `json:"state"`
	Published  int           `json:"published"`
	PieceCount int           `json:"pieceCount"`
	Error      string        `json:"error,omitempty"`
}

// Resolver resolves image references; *registrysource.Client is one.
type Resolver interface {
	ParseImage(ref string) (registrysource.ImageRef, error)
	ResolveImage(ctx context.Context, ir registrysource.ImageRef, platform *ocispec.Platform, creds registrysource.Credentials) (*registrysource.Image, error)
}

// Tasks is the part of the task owner (*task.Manager) a preheat drives.
type Tasks interface {
	// Ensure makes sure the CDN has, or is fetching, a task.
	Ensure(ctx context.Context, req task.Request) (schedapi.TaskInfo, error)
	// Task reports a task's progress.
	Task(ctx context.Context, taskID taskid.ID) (scheduler.TaskStatus, error)
}

// Option configures a Preheater.
type Option func(*Preheater)

// WithLogger sets the logger (default: no logging).
func WithLogger(l *zap.Logger) Option {
	return func(p *Preheater) {
		if l != nil {
			p.log = l
		}
	}
}

// WithMaxRecords bounds the preheats kept (default 1000).
func WithMaxRecords(n int) Option {
	return func(p *Preheater) {
		if n > 0 {
			p.maxRecords = n
		}
	}
}

// Preheater runs preheats. It is safe for concurrent use.
type Preheater struct {
	resolver         Resolver
	tasks            Tasks
	log              *zap.Logger
	creds            map[string]registrysource.Credentials
	timeout          time.Duration
	maxRecords       int
	layerConcurrency int

	base    context.Context // parent of every run; cancelled by Run's end
	cancel  context.CancelFunc
	running chan struct{} // slots of preheats running at once
	wg      sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	records map[string]*Status
	order   []string // IDs, oldest first
}

// New returns a Preheater configured by cfg (defaults applied here) that
// resolves images with resolver and has the CDN fetch their blobs through tasks. The resolver
// is built by the caller, with cfg.InsecureRegistries. Run must run for it
// to stop cleanly.
func New(cfg Config, resolver Resolver, tasks Tasks, opts ...Option) *Preheater {
	cfg = cfg.ApplyDefaults()
	base, cancel := context.WithCancel(context.Background())
	p := &Preheater{
		resolver:         resolver,
		tasks:            tasks,
		log:              zap.NewNop(),
		creds:            cfg.Credentials(),
		timeout:          cfg.Timeout,
		maxRecords:       defaultMaxRecords,
		layerConcurrency: defaultLayerConcurrency,
		base:             base,
		cancel:           cancel,
		running:          make(chan struct{}, defaultMaxRunning),
		records:          map[string]*Status{},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

// Run waits until ctx is done, then cancels the preheats in progress (they
// fail) and returns nil once they have stopped. Create fails with
// ErrClosed after that.
func (p *Preheater) Run(ctx context.Context) error {
	<-ctx.Done()
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.cancel()
	p.wg.Wait()
	return nil
}

// job is what a run needs beyond its Status: the secrets stay here.
type job struct {
	id       string
	image    registrysource.ImageRef
	platform *ocispec.Platform
	creds    registrysource.Credentials
	fileURL  string // a file's URL or a torrent's link
	file     string // the torrent's file
	digest   digest.Digest
	header   http.Header
}

// Create checks req and starts the preheat in the background.
func (p *Preheater) Create(_ context.Context, req Request) (Status, error) {
	j, st, err := p.parse(req)
	if err != nil {
		return Status{}, err
	}
	id, err := newID()
	if err != nil {
		return Status{}, fmt.Errorf("preheat id: %w", err)
	}
	j.id, st.ID = id, id
	st.State = StateRunning
	st.CreatedAt = time.Now().UTC()

	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return Status{}, ErrClosed
	}
	rec := st.clone()
	p.records[id] = &rec
	p.order = append(p.order, id)
	p.trimLocked()
	p.wg.Add(1)
	p.mu.Unlock()

	go p.run(j)
	p.log.Info("preheat started", zap.String("preheat", id), zap.String("type", st.Type),
		zap.String("image", st.Image), zap.String("url", st.URL), zap.String("file", st.File), zap.String("platform", st.Platform))
	return st, nil
}

// Get returns a preheat's status.
func (p *Preheater) Get(_ context.Context, id string) (Status, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st, ok := p.records[id]
	if !ok {
		return Status{}, fmt.Errorf("preheat %q: %w", redact.Truncate(id), ErrNotFound)
	}
	return st.clone(), nil
}

// List returns every preheat the Preheater remembers, newest first.
func (p *Preheater) List(_ context.Context) ([]Status, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Status, 0, len(p.order))
	for i := len(p.order) - 1; i >= 0; i-- {
		if st, ok := p.records[p.order[i]]; ok {
			out = append(out, st.clone())
		}
	}
	return out, nil
}

// parse checks a request and splits it into the job (with its secrets) and
// the public status.
func (p *Preheater) parse(req Request) (job, Status, error) {
	invalid := func(format string, args ...any) (job, Status, error) {
		return job{}, Status{}, fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrInvalid)
	}
	switch req.Type {
	case TypeImage:
		if req.Digest != "" || len(req.Headers) > 0 {
			return invalid("digest and headers are for type %q", TypeFile)
		}
		if req.File != "" {
			return invalid("file is for type %q", TypeTorrent)
		}
		if req.Token != "" && (req.Username != "" || req.Password != "") {
			return invalid("token or username/password, not both")
		}
		ir, err := p.resolver.ParseImage(strings.TrimSpace(req.URL))
		if err != nil {
			return job{}, Status{}, fmt.Errorf("url: %w: %w", ErrInvalid, err)
		}
		if req.Insecure {
			ir.Base.Scheme = "http"
		}
		j := job{image: ir, creds: registrysource.Credentials{Username: req.Username, Password: req.Password, Token: req.Token}}
		st := Status{Type: TypeImage, Image: ir.String(), Layers: []Layer{}}
		if req.Platform != "" {
			pl, err := registrysource.ParsePlatform(req.Platform)
			if err != nil {
				return job{}, Status{}, fmt.Errorf("platform: %w: %w", ErrInvalid, err)
			}
			j.platform = &pl
		}
		pl := registrysource.DefaultPlatform()
		if j.platform != nil {
			pl = *j.platform
		}
		st.Platform = platformString(pl)
		if j.creds.IsZero() {
			j.creds = p.configured(ir.Base.Host)
		}
		return j, st, nil
	case TypeFile, TypeTorrent:
		if req.Username != "" || req.Password != "" || req.Token != "" || req.Platform != "" {
			return invalid("username, password, token and platform are for type %q; send credentials in headers", TypeImage)
		}
		var j job
		var st Status
		if req.Type == TypeFile {
			if btlink.IsLink(req.URL) {
				return invalid("url: a magnet link or a torrent+http(s) URL is type %q", TypeTorrent)
			}
			if req.File != "" {
				return invalid("file is for type %q", TypeTorrent)
			}
			u, err := url.Parse(req.URL)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				return invalid("url: want an http(s) URL")
			}
			j = job{fileURL: u.String()}
			st = Status{Type: TypeFile, URL: redact.URL(u.String())}
		} else {
			if !btlink.IsLink(req.URL) {
				return invalid("url: want a magnet link (magnet:?xt=urn:btih:…) or a torrent file URL (torrent+https://…)")
			}
			if _, err := btlink.Parse(req.URL); err != nil {
				// Answered to the requester only; URLs quoted in it are
				// redacted all the same.
				return invalid("url: %s", redact.Error(err))
			}
			if req.Insecure {
				return invalid("insecure is for type %q", TypeImage)
			}
			if err := schedapi.ValidateFile(req.URL, req.File); err != nil {
				return invalid("%v", err)
			}
			j = job{fileURL: req.URL, file: req.File}
			st = Status{Type: TypeTorrent, URL: redact.URL(req.URL), File: req.File}
		}
		if req.Digest != "" {
			d, err := digest.Parse(req.Digest)
			if err != nil || d.Algorithm() != digest.SHA256 {
				return invalid("digest: want sha256:<64 hex>")
			}
			j.digest = d
		}
		if len(req.Headers) > maxHeaders {
			return invalid("headers: more than %d", maxHeaders)
		}
		j.header = http.Header{}
		for k, v := range req.Headers {
			if !validHeaderName(k) || strings.ContainsAny(v, "\r\n\x00") {
				return invalid("headers: invalid header %q", redact.Truncate(k))
			}
			j.header.Set(k, v)
		}
		id, err := p.fileTaskID(j)
		if err != nil {
			return invalid("url: %v", err)
		}
		st.Layers = []Layer{{Digest: j.digest, TaskID: id, Size: -1, State: StatePending, PieceCount: -1}}
		return j, st, nil
	case "":
		return invalid("type: missing (%q, %q or %q)", TypeImage, TypeFile, TypeTorrent)
	default:
		return invalid("type %q: want %q, %q or %q", redact.Truncate(req.Type), TypeImage, TypeFile, TypeTorrent)
	}
}

// configured returns the configured credentials of a registry host.
func (p *Preheater) configured(host string) registrysource.Credentials {
	host = strings.ToLower(host)
	if c, ok := p.creds[host]; ok {
		return c
	}
	if host == "registry-1.docker.io" {
		for _, alias := range []string{"docker.io", "index.docker.io"} {
			if c, ok := p.creds[alias]; ok {
				return c
			}
		}
	}
	return registrysource.Credentials{}
}

func (p *Preheater) fileTaskID(j job) (taskid.ID, error) {
	return taskid.Derive(taskid.Source{Digest: j.digest, URL: j.fileURL, File: j.file})
}

// trimLocked drops records over the bound: finished ones first, oldest
// first; running ones only when nothing else is left.
func (p *Preheater) trimLocked() {
	for len(p.order) > p.maxRecords {
		drop := -1
		for i, id := range p.order {
			if s := p.records[id]; s.State != StateRunning {
				drop = i
				break
			}
		}
		if drop < 0 {
			drop = 0
		}
		delete(p.records, p.order[drop])
		p.order = append(p.order[:drop], p.order[drop+1:]...)
	}
}

// update applies fn to the record of id, if it is still kept.
func (p *Preheater) update(id string, fn func(*Status)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if st, ok := p.records[id]; ok {
		fn(st)
	}
}

func (s *Status) clone() Status {
	c := *s
	c.Layers = append([]Layer{}, s.Layers...)
	if s.FinishedAt != nil {
		t := *s.FinishedAt
		c.FinishedAt = &t
	}
	return c
}

func newID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

func platformString(p ocispec.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

func validHeaderName(k string) bool {
	if k == "" || len(k) > 256 {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}
