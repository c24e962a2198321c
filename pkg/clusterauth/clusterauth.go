// Package clusterauth is the cluster's membership credential: a shared
// secret token that every member (supernode, dfdaemon, dfget) presents on
// every peer-API call and every piece request, and that every listener of
// the cluster's data path checks before it registers, assigns or serves
// anything.
//
// A member holds one or two tokens (Keys). It sends the first and accepts
// any of them, so a cluster rotates its token without a flag day: give every
// member "new,old", then "new" once all of them send the new one.
//
// Tokens travel as "Authorization: Bearer <token>", are compared in constant
// time and are never logged: Keys has no String method that shows them.
package clusterauth

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

// EnvToken is the environment variable that gives every binary its cluster
// token(s): "token" or "new,old".
const EnvToken = "DAMSELFLY_CLUSTER_TOKEN"

// FileName is the name of the token file the supernode generates in its
// data dir on first start.
const FileName = "cluster-token"

// MinLength is the length under which a token is called weak. A generated
// token is 64 hex characters.
const MinLength = 16

// maxTokens is how many tokens a member holds at once: the current one and,
// during a rotation, the previous one.
const maxTokens = 2

// maxLength bounds one token.
const maxLength = 1 << 10

// ErrNoToken is returned where a token is required and none was given.
var ErrNoToken = errors.New("no cluster token")

// Keys are the cluster tokens a member holds. The zero value holds none.
type Keys struct {
	send   string
	accept [][sha256.Size]byte
}

// Parse reads one token or two ("new,old"; commas, spaces and newlines
// separate), as found in the environment, a config file or a token file.
func Parse(s string) (Keys, error) {
	fields := strings.FieldsFunc(s, func(r rune) bool {
		return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r'
	})
	if len(fields) == 0 {
		return Keys{}, ErrNoToken
	}
	if len(fields) > maxTokens {
		return Keys{}, fmt.Errorf("cluster token: %d tokens given, at most %d (the current one and, while rotating, the previous one)", len(fields), maxTokens)
	}
	var k Keys
	for i, f := range fields {
		if len(f) > maxLength {
			return Keys{}, fmt.Errorf("cluster token %d: longer than %d bytes", i+1, maxLength)
		}
		for _, c := range []byte(f) {
			if c < 0x21 || c > 0x7e {
				return Keys{}, fmt.Errorf("cluster token %d: only printable ASCII without spaces is allowed", i+1)
			}
		}
		if i == 0 {
			k.send = f
		}
		k.accept = append(k.accept, sha256.Sum256([]byte(f)))
	}
	return k, nil
}

// MustParse is Parse for a token known to be valid (tests, tools); it
// panics on an error.
func MustParse(s string) Keys {
	k, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return k
}

// ReadFile reads the token(s) from a file (see Parse).
func ReadFile(path string) (Keys, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Keys{}, fmt.Errorf("cluster token file: %w", err)
	}
	k, err := Parse(string(b))
	if err != nil {
		return Keys{}, fmt.Errorf("cluster token file %s: %w", path, err)
	}
	return k, nil
}

// LoadOrGenerate reads the token file at path, or, when there is none,
// writes a new random token there (mode 0600, atomically) and returns it.
// generated tells which happened.
func LoadOrGenerate(path string) (k Keys, generated bool, err error) {
	k, err = ReadFile(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return k, false, err
	}
	var raw [32]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return Keys{}, false, fmt.Errorf("cluster token: %w", err)
	}
	tok := hex.EncodeToString(raw[:])
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return Keys{}, false, fmt.Errorf("cluster token: %w", err)
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	if _, err = tmp.WriteString(tok + "\n"); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return Keys{}, false, fmt.Errorf("cluster token: %w", err)
	}
	k, err = Parse(tok)
	return k, true, err
}

// IsZero reports whether k holds no token.
func (k Keys) IsZero() bool { return k.send == "" }

// Weak reports whether any token is shorter than MinLength.
func (k Keys) Weak() bool {
	return k.send != "" && len(k.send) < MinLength
}

// Rotating reports whether k accepts a second, previous token.
func (k Keys) Rotating() bool { return len(k.accept) > 1 }

// Set puts the token to send on h.
func (k Keys) Set(h http.Header) {
	if k.send != "" {
		h.Set("Authorization", "Bearer "+k.send)
	}
}

// Valid reports whether r presents one of the accepted tokens. The
// comparison takes the same time whichever token matches, and however much
// of one does.
func (k Keys) Valid(r *http.Request) bool {
	if len(k.accept) == 0 {
		return false
	}
	auth := r.Header.Get("Authorization")
	const prefix = "Bearer "
	if len(auth) <= len(prefix) || !strings.EqualFold(auth[:len(prefix)], prefix) {
		return false
	}
	got := sha256.Sum256([]byte(auth[len(prefix):]))
	ok := 0
	for _, want := range k.accept {
		ok |= subtle.ConstantTimeCompare(got[:], want[:])
	}
	return ok == 1
}

// Config is the part of a binary's config file that gives its token, to
// embed inline: the token(s) themselves, or a file holding them (a mounted
// secret).
type Config struct {
	Token     string `yaml:"clusterToken"`
	TokenFile string `yaml:"clusterTokenFile"`
	// FlagFile is the --cluster-token-file flag, which wins over the rest.
	FlagFile string `yaml:"-"`
}

// Load returns the token(s) from the first place that gives them, in this
// order: the --cluster-token-file flag, the environment variable EnvToken,
// the config's clusterTokenFile, then its clusterToken. It names the place
// for logs (never the token). With none it returns ErrNoToken.
func (cfg Config) Load(lookupEnv func(string) (string, bool)) (Keys, string, error) {
	env, _ := lookupEnv(EnvToken)
	switch {
	case cfg.FlagFile != "":
		k, err := ReadFile(cfg.FlagFile)
		return k, "--cluster-token-file " + cfg.FlagFile, err
	case strings.TrimSpace(env) != "":
		k, err := Parse(env)
		if err != nil {
			err = fmt.Errorf("$%s: %w", EnvToken, err)
		}
		return k, "$" + EnvToken, err
	case cfg.TokenFile != "":
		k, err := ReadFile(cfg.TokenFile)
		if err != nil {
			err = fmt.Errorf("clusterTokenFile: %w", err)
		}
		return k, "clusterTokenFile " + cfg.TokenFile, err
	case cfg.Token != "":
		k, err := Parse(cfg.Token)
		if err != nil {
			err = fmt.Errorf("clusterToken: %w", err)
		}
		return k, "clusterToken", err
	}
	return Keys{}, "", ErrNoToken
}

// Challenge is the WWW-Authenticate value of a refused request.
const Challenge = `Bearer realm="damselfly-cluster"`

// Message is what a refused request is told.
const Message = "cluster token missing or wrong: every member of the cluster needs the supernode's cluster token (" + EnvToken + " or --cluster-token-file)"
