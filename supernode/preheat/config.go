package preheat

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/damselfly/damselfly/pkg/source/registrysource"
)

// DefaultTimeout bounds one preheat, from resolving the image to the last
// layer fetched.
const DefaultTimeout = time.Hour

// Config is the preheat section of the supernode's configuration.
type Config struct {
	// Registries holds default credentials by registry "host[:port]"
	// ("docker.io" for Docker Hub), used when a preheat request brings
	// none.
	Registries map[string]RegistryCredentials `yaml:"registries"`
	// InsecureRegistries are reached over plain http: "host:port", or a
	// bare "host" for any port.
	InsecureRegistries []string `yaml:"insecureRegistries"`
	// Timeout bounds one preheat. Default 1h.
	Timeout time.Duration `yaml:"timeout"`
}

// RegistryCredentials are a registry's user name and password, or a bearer
// token used as it is.
type RegistryCredentials struct {
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	Token    string `yaml:"token"`
}

// String hides the secrets.
func (c RegistryCredentials) String() string {
	return registrysource.Credentials(c).String()
}

// ApplyDefaults fills unset fields.
func (c Config) ApplyDefaults() Config {
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	return c
}

// Validate reports every problem of the config, each naming its key.
func (c Config) Validate() error {
	var errs []error
	if c.Timeout < 0 {
		errs = append(errs, fmt.Errorf("preheat.timeout: %v is negative", c.Timeout))
	}
	for host, cr := range c.Registries {
		if err := checkRegistryHost(host); err != nil {
			errs = append(errs, fmt.Errorf("preheat.registries: %w", err))
		}
		if cr.Token != "" && (cr.Username != "" || cr.Password != "") {
			errs = append(errs, fmt.Errorf("preheat.registries[%s]: token or username/password, not both", host))
		}
	}
	for _, host := range c.InsecureRegistries {
		if err := checkRegistryHost(host); err != nil {
			errs = append(errs, fmt.Errorf("preheat.insecureRegistries: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Credentials returns the configured credentials keyed by lower-case host.
func (c Config) Credentials() map[string]registrysource.Credentials {
	out := make(map[string]registrysource.Credentials, len(c.Registries))
	for host, cr := range c.Registries {
		out[strings.ToLower(host)] = registrysource.Credentials(cr)
	}
	return out
}

// checkRegistryHost accepts "host" or "host:port".
func checkRegistryHost(host string) error {
	u, err := url.Parse("//" + host)
	if err != nil || host == "" || u.Host != host || u.Path != "" || u.User != nil || u.Hostname() == "" {
		return fmt.Errorf("%q: want host or host:port", host)
	}
	if _, port, err := net.SplitHostPort(host); err == nil && port == "" {
		return fmt.Errorf("%q: empty port", host)
	}
	return nil
}
