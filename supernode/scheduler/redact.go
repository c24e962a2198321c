package scheduler

// Redaction of source URLs the scheduler shows (admin API, logs).

import (
	"net/url"
	"strings"
)

// redactURL returns raw without userinfo and with the values of query keys
// that usually carry secrets (signatures, tokens, keys) replaced. An
// unparsable URL is dropped whole rather than risk showing a secret.
func redactURL(raw string) string {
	if raw == "" {
		return ""
	}
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	u.User = nil
	if u.RawQuery != "" {
		q := u.Query()
		for k := range q {
			if secretKey(k) {
				q[k] = []string{"REDACTED"}
			}
		}
		u.RawQuery = q.Encode()
	}
	return u.String()
}

func secretKey(k string) bool {
	k = strings.ToLower(k)
	for _, s := range []string{"sig", "token", "key", "secret", "password", "credential", "auth"} {
		if strings.Contains(k, s) {
			return true
		}
	}
	return false
}
