package registrysource

import (
	"fmt"
	"net/url"
	"strings"

	digest "github.com/opencontainers/go-digest"

	"github.com/damselfly/damselfly/pkg/redact"
)

// ValidateRepository reports whether repo is a repository path on a
// registry, such as "library/alpine": lowercase components of the
// distribution grammar separated by "/", no host, at most 255 characters.
func ValidateRepository(repo string) error {
	if !validRepository(repo) {
		return fmt.Errorf("repository %q: %w", redact.Truncate(repo), ErrInvalid)
	}
	return nil
}

// ValidateReference reports whether ref is a tag or a sha256 digest.
func ValidateReference(ref string) error {
	_, _, err := parseRef(ref)
	return err
}

// parseRef splits ref into a tag or a sha256 digest (exactly one is set).
func parseRef(ref string) (tag string, d digest.Digest, err error) {
	if strings.Contains(ref, ":") {
		d, err = parseDigest(ref)
		return "", d, err
	}
	if !validTag(ref) {
		return "", "", fmt.Errorf("reference %q: %w", redact.Truncate(ref), ErrInvalid)
	}
	return ref, "", nil
}

// parseDigest accepts only a well-formed sha256 digest.
func parseDigest(s string) (digest.Digest, error) {
	if !validSHA256(s) {
		return "", fmt.Errorf("digest %q: %w", redact.Truncate(s), ErrInvalid)
	}
	return digest.Digest(s), nil
}

// checkBase requires http(s)://host[:port] (a trailing "/" is fine).
func checkBase(base *url.URL) error {
	if base == nil {
		return fmt.Errorf("registry url missing: %w", ErrInvalid)
	}
	if (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" ||
		(base.Path != "" && base.Path != "/") || base.User != nil || base.RawQuery != "" || base.Fragment != "" || base.Opaque != "" {
		return fmt.Errorf("registry url %s://%s: must be http(s)://host[:port]: %w", base.Scheme, base.Host, ErrInvalid)
	}
	return nil
}

// v2URL builds base + /v2/<repo>/<rest...>; the elements are validated.
func v2URL(base *url.URL, repo string, rest ...string) string {
	u := url.URL{Scheme: base.Scheme, Host: base.Host, Path: "/v2/" + repo + "/" + strings.Join(rest, "/")}
	return u.String()
}

// ManifestURL is the URL of a manifest by tag or sha256 digest.
func ManifestURL(base *url.URL, repo, ref string) (string, error) {
	if err := checkBase(base); err != nil {
		return "", err
	}
	if err := ValidateRepository(repo); err != nil {
		return "", err
	}
	if _, _, err := parseRef(ref); err != nil {
		return "", err
	}
	return v2URL(base, repo, "manifests", ref), nil
}

// BlobURL is the URL of a blob.
func BlobURL(base *url.URL, repo string, d digest.Digest) (string, error) {
	if err := checkBase(base); err != nil {
		return "", err
	}
	if err := ValidateRepository(repo); err != nil {
		return "", err
	}
	if _, err := parseDigest(string(d)); err != nil {
		return "", err
	}
	return v2URL(base, repo, "blobs", string(d)), nil
}

// TagsURL is the URL of a repository's tag list.
func TagsURL(base *url.URL, repo string) (string, error) {
	if err := checkBase(base); err != nil {
		return "", err
	}
	if err := ValidateRepository(repo); err != nil {
		return "", err
	}
	return v2URL(base, repo, "tags", "list"), nil
}

// pingURL is base + /v2/.
func pingURL(base *url.URL) string {
	u := url.URL{Scheme: base.Scheme, Host: base.Host, Path: "/v2/"}
	return u.String()
}
