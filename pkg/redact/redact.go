// Package redact is the one policy for showing a URL where it may be read by
// someone other than its owner: logs, the admin API, error messages, peers.
//
// The policy: a URL is shown as scheme, host and path. User information
// (user name and password), the query (signatures, tokens, keys) and the
// fragment are dropped whole. No attempt is made to tell secret query keys
// from harmless ones: a list of names misses the next signing scheme.
package redact

import (
	"net/url"
	"regexp"
)

// Unparsable stands for a URL that does not parse: it is never shown, as
// the parser cannot say which part of it is a secret.
const Unparsable = "<unparsable url>"

// URL returns raw as it may be shown: without user information, query or
// fragment. The empty string stays empty.
func URL(raw string) string {
	if raw == "" {
		return ""
	}
	u, err := url.Parse(raw)
	if err != nil {
		return Unparsable
	}
	if u.Opaque != "" {
		// "user:password@host" parses as scheme "user" with an opaque part.
		return u.Scheme + ":"
	}
	r := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}
	return r.String()
}

// urlInText finds URLs quoted in error texts: transport errors quote the
// URL they failed on, query and user information included.
var urlInText = regexp.MustCompile(`[a-zA-Z][a-zA-Z0-9+.-]*://[^\s"'<>]*`)

// Text returns s with every URL in it redacted as by URL.
func Text(s string) string {
	return urlInText.ReplaceAllStringFunc(s, URL)
}

// Error returns err's text with every URL in it redacted as by URL; "" for nil.
func Error(err error) string {
	if err == nil {
		return ""
	}
	return Text(err.Error())
}
