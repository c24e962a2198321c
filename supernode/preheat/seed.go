package preheat

// Running a preheat: resolve the image (or take the file), hand each blob to
// the task owner and follow it until it settles, recording its progress.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/damselfly/damselfly/pkg/schedapi"
	"github.com/damselfly/damselfly/pkg/source/registrysource"
	"github.com/damselfly/damselfly/pkg/taskid"
	"github.com/damselfly/damselfly/supernode/scheduler"
	"github.com/damselfly/damselfly/supernode/task"
)

// run does one preheat.
func (p *Preheater) run(j job) {
	defer p.wg.Done()
	ctx, cancel := context.WithTimeout(p.base, p.timeout)
	defer cancel()
	log := p.log.With(zap.String("preheat", j.id))

	var err error
	select {
	case p.running <- struct{}{}:
		defer func() { <-p.running }()
		if j.fileURL != "" {
			err = p.runFile(ctx, j)
		} else {
			err = p.runImage(ctx, j, log)
		}
	case <-ctx.Done():
		err = ctx.Err()
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		err = fmt.Errorf("timed out after %v", p.timeout)
	case errors.Is(err, context.Canceled):
		err = errors.New("cancelled: the supernode is stopping")
	}
	now := time.Now().UTC()
	var state State
	p.update(j.id, func(st *Status) {
		st.FinishedAt = &now
		switch {
		case err != nil:
			st.State, st.Error = StateFailed, err.Error()
		default:
			st.State = StateSucceeded
			for _, l := range st.Layers {
				if l.State == StateFailed {
					st.State = StateFailed
					if st.Error == "" {
						st.Error = fmt.Sprintf("blob %s: %s", l.Digest, l.Error)
					}
				}
			}
		}
		state = st.State
	})
	if err != nil {
		log.Warn("preheat failed", zap.Error(err))
		return
	}
	log.Info("preheat finished", zap.String("state", string(state)))
}

// runImage resolves the image and has the CDN fetch its blobs.
func (p *Preheater) runImage(ctx context.Context, j job, log *zap.Logger) error {
	img, err := p.resolver.ResolveImage(ctx, j.image, j.platform, j.creds)
	if err != nil {
		return explainResolve(j.image, err)
	}
	blobs := append([]ocispec.Descriptor{img.Config}, img.Layers...)
	layers := make([]Layer, 0, len(blobs))
	seen := map[digest.Digest]bool{}
	for _, b := range blobs {
		if seen[b.Digest] {
			continue
		}
		seen[b.Digest] = true
		id, err := taskid.ForDigest(b.Digest)
		if err != nil {
			return fmt.Errorf("blob %s: %w", b.Digest, err)
		}
		l := Layer{Digest: b.Digest, TaskID: id, MediaType: b.MediaType, Size: b.Size, State: StatePending, PieceCount: -1}
		if nonDistributable(b) {
			l.State = StateSkipped
		}
		layers = append(layers, l)
	}
	p.update(j.id, func(st *Status) {
		st.Manifest = img.Manifest
		st.Layers = append([]Layer(nil), layers...)
		if img.Platform != nil {
			st.Platform = platformString(*img.Platform)
		}
	})
	log.Info("preheat resolved", zap.Stringer("digest", img.Manifest), zap.Int("blobs", len(layers)))

	var g errgroup.Group
	g.SetLimit(p.layerConcurrency)
	for i, l := range layers {
		if l.State == StateSkipped {
			continue
		}
		g.Go(func() error {
			u, err := registrysource.BlobURL(img.Base, img.Repo, l.Digest)
			if err == nil {
				// Asked per blob: a token cached by the resolver is
				// reused until shortly before it expires.
				var h http.Header
				if h, err = img.Auth.Header(ctx); err == nil {
					err = p.fetch(ctx, j.id, i, task.Request{TaskID: l.TaskID, URL: u, Header: h, Digest: l.Digest})
				}
			}
			if err != nil {
				p.update(j.id, func(st *Status) {
					st.Layers[i].State, st.Layers[i].Error = StateFailed, err.Error()
				})
			}
			return nil
		})
	}
	_ = g.Wait()
	return ctx.Err()
}

// runFile has the CDN fetch one file.
func (p *Preheater) runFile(ctx context.Context, j job) error {
	id, err := p.fileTaskID(j)
	if err != nil {
		return err
	}
	if err := p.fetch(ctx, j.id, 0, task.Request{TaskID: id, URL: j.fileURL, File: j.file, Header: j.header, Digest: j.digest}); err != nil {
		p.update(j.id, func(st *Status) {
			st.Layers[0].State, st.Layers[0].Error = StateFailed, err.Error()
		})
	}
	return ctx.Err()
}

// fetch hands one task to the CDN and follows it until it settles, keeping
// layer i of the record up to date. A task that fails is recorded, not
// returned; the error is for what stopped the following.
func (p *Preheater) fetch(ctx context.Context, id string, i int, req task.Request) error {
	info, err := p.tasks.Ensure(ctx, req)
	if err != nil {
		return err
	}
	p.setLayer(id, i, info, -1)
	wait := minPoll
	for state := info.State; state == schedapi.TaskRunning; {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		wait = min(wait*2, maxPoll)
		ts, err := p.tasks.Task(ctx, req.TaskID)
		if errors.Is(err, scheduler.ErrTaskNotFound) {
			return fmt.Errorf("task %s is gone from the scheduler", req.TaskID)
		}
		if err != nil {
			return err
		}
		p.setLayer(id, i, ts.TaskInfo, ts.Published)
		state = ts.State
	}
	return nil
}

// setLayer records a task's progress; published -1: unknown (all pieces of
// a succeeded task are published).
func (p *Preheater) setLayer(id string, i int, info schedapi.TaskInfo, published int) {
	p.update(id, func(st *Status) {
		if i >= len(st.Layers) {
			return
		}
		l := &st.Layers[i]
		l.State = State(info.State)
		l.PieceCount = info.PieceCount
		if info.Size >= 0 {
			l.Size = info.Size
		}
		switch {
		case info.State == schedapi.TaskSucceeded:
			l.Published = max(info.PieceCount, 0)
		case published >= 0:
			l.Published = published
		}
		if info.State == schedapi.TaskFailed {
			l.Error = info.Error
		}
	})
}

// nonDistributable reports layers that are not in the registry (foreign
// layers pointing at URLs).
func nonDistributable(d ocispec.Descriptor) bool {
	return len(d.URLs) > 0 || strings.Contains(d.MediaType, "foreign") || strings.Contains(d.MediaType, "nondistributable")
}

// explainResolve adds what to change to a resolution error whose cause the
// operator can fix: a registry that answers plain http to https.
func explainResolve(ir registrysource.ImageRef, err error) error {
	if ir.Base.Scheme == "https" && strings.Contains(err.Error(), "server gave HTTP response to HTTPS client") {
		return fmt.Errorf("%w; %s answers plain http: list it in preheat.insecureRegistries, start the supernode with --preheat-insecure-registry %s, or send \"insecure\": true with the preheat", err, ir.Base.Host, ir.Base.Host)
	}
	return err
}
