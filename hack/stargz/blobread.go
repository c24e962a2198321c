package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/pkg/reference"
	"github.com/containerd/stargz-snapshotter/cache"
	fsconfig "github.com/containerd/stargz-snapshotter/fs/config"
	"github.com/containerd/stargz-snapshotter/fs/remote"
	"github.com/containerd/stargz-snapshotter/service/resolver"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// blobread drives the library's remote blob (fs/remote: the code the
// snapshotter reads layers with, chunk cache and all) through the same
// mirror configuration, one operation at a time, so that a test can make it
// send the requests a lazy pull sends in the long run: a read of some
// chunks, then a Cache of a range around them (prefetch, or a pull of an
// image whose chunks the snapshotter's cache partly holds) that the library
// asks for as several ranges in one request.
//
//	stargz blobread --mirror REG=MIRROR --ref REG/repo:tag --digest sha256:… --size N \
//	    read:OFF:LEN cache:OFF:LEN read:OFF:LEN …
//
// Each read prints "read OFF LEN sha256:<hex>" (of the bytes read); each
// cache prints "cache OFF LEN ok". The first failure ends it with status 1.
func blobread(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("stargz blobread", flag.ContinueOnError)
	mirrors := mirrorFlag{}
	fs.Var(mirrors, "mirror", "`REGISTRY=MIRROR` as for the daemon; repeatable")
	ref := fs.String("ref", "", "image `reference` whose repository holds the blob (required)")
	dgst := fs.String("digest", "", "the blob's `digest` (required)")
	size := fs.Int64("size", 0, "the blob's size in `bytes` (as the manifest says)")
	single := fs.Bool("single-range", false, "one covering range a request (force_single_range_mode)")
	chunk := fs.Int64("chunk-size", 0, "the library's fetch granularity in `bytes` (0: its default, 50000)")
	requestLog := fs.String("request-log", "", "append every request and its answer as a JSON line to `file`")
	timeout := fs.Duration("timeout", 2*time.Minute, "limit of the whole run")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *ref == "" || *dgst == "" {
		return errors.New("--ref and --digest are required")
	}
	d, err := digest.Parse(*dgst)
	if err != nil {
		return err
	}
	spec, err := reference.Parse(*ref)
	if err != nil {
		return err
	}
	type op struct {
		kind      string
		off, size int64
	}
	var ops []op
	for _, a := range fs.Args() {
		parts := strings.Split(a, ":")
		if len(parts) != 3 || (parts[0] != "read" && parts[0] != "cache") {
			return fmt.Errorf("operation %q: want read:OFF:LEN or cache:OFF:LEN", a)
		}
		off, err1 := strconv.ParseInt(parts[1], 10, 64)
		n, err2 := strconv.ParseInt(parts[2], 10, 64)
		if err := errors.Join(err1, err2); err != nil || off < 0 || n <= 0 {
			return fmt.Errorf("operation %q: bad offset or length", a)
		}
		ops = append(ops, op{parts[0], off, n})
	}

	var rec *recorder
	if *requestLog != "" {
		f, err := os.OpenFile(*requestLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		defer f.Close()
		rec = &recorder{w: f}
	}
	cfg := config(options{mirrors: mirrors})
	hosts := recordedHosts(resolver.RegistryHostsFromConfig(resolver.Config(cfg.ResolverConfig)), rec)

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	r := remote.NewResolver(fsconfig.BlobConfig{ForceSingleRangeMode: *single, ChunkSize: *chunk, MaxRetries: 1}, nil)
	blob, err := r.Resolve(ctx, hosts, spec, ocispec.Descriptor{Digest: d, Size: *size}, cache.NewMemoryCache())
	if err != nil {
		return fmt.Errorf("resolve %s: %w", d, err)
	}
	defer blob.Close()
	for _, o := range ops {
		switch o.kind {
		case "read":
			p := make([]byte, o.size)
			n, err := blob.ReadAt(p, o.off, remote.WithContext(ctx))
			if err != nil {
				return fmt.Errorf("read %d+%d: %w", o.off, o.size, err)
			}
			fmt.Fprintf(stdout, "read %d %d sha256:%x\n", o.off, n, sha256.Sum256(p[:n]))
		case "cache":
			if err := blob.Cache(o.off, o.size, remote.WithContext(ctx)); err != nil {
				return fmt.Errorf("cache %d+%d: %w", o.off, o.size, err)
			}
			fmt.Fprintf(stdout, "cache %d %d ok\n", o.off, o.size)
		}
	}
	return nil
}
