package command

import (
	"flag"

	"github.com/damselfly/damselfly/pkg/log"
	"github.com/damselfly/damselfly/pkg/netpolicy"
)

// CommonFlags are the flags every daemon takes the same way: --log-level,
// --log-format, --source-allow and --source-deny.
type CommonFlags struct {
	logLevel, logFormat string
	source              netpolicy.Config
}

// Register adds the common flags to fs; what says, in their help, what the
// source policy covers ("sources", "the upstream").
func (c *CommonFlags) Register(fs *flag.FlagSet, what string) {
	fs.StringVar(&c.logLevel, "log-level", "", "log `level`: debug, info, warn, error (default info)")
	fs.StringVar(&c.logFormat, "log-format", "", "log `format`: json or console (default console)")
	fs.Var(netpolicy.ListFlag{List: &c.source.Allow}, "source-allow", "`CIDR|IP|HOST` "+what+" may be reached at although denied by default, e.g. 127.0.0.1/32; adds to source.allow (repeatable, comma-separated)")
	fs.Var(netpolicy.ListFlag{List: &c.source.Deny}, "source-deny", "`CIDR|IP|HOST` "+what+" are never reached at; adds to source.deny (repeatable, comma-separated)")
}

// Apply copies the flag called name into the config's log and source
// sections when it is one of the common flags (the source lists add to the
// file's), and reports whether it was.
func (c *CommonFlags) Apply(name string, lg *log.Config, source *netpolicy.Config) bool {
	switch name {
	case "log-level":
		lg.Level = c.logLevel
	case "log-format":
		lg.Format = c.logFormat
	case "source-allow":
		source.Allow = append(source.Allow, c.source.Allow...)
	case "source-deny":
		source.Deny = append(source.Deny, c.source.Deny...)
	default:
		return false
	}
	return true
}
