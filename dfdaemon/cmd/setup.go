package cmd

import (
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/damselfly/damselfly/dfdaemon/nodesetup"
	"github.com/damselfly/damselfly/pkg/command"
)

// SetupContainerd is the subcommand that points the node's containerd at
// this dfdaemon (dfdaemon/nodesetup).
const SetupContainerd = "setup-containerd"

// runSetupContainerd parses the subcommand's flags, writes (or, with
// --undo, restores) containerd's host files and reports each file and each
// way containerd would ignore them. It never restarts containerd.
func runSetupContainerd(args []string, stdout, stderr io.Writer) error {
	var (
		o          nodesetup.Options
		registries string
		config     string
	)
	fs := flag.NewFlagSet("dfdaemon "+SetupContainerd, flag.ContinueOnError)
	fs.SetOutput(stdout)
	fs.StringVar(&o.HostsDir, "hosts-dir", "/etc/containerd/certs.d", "containerd's registry config_path `DIR`")
	fs.StringVar(&o.Mirror, "mirror", "http://127.0.0.1:65001", "`URL` of this node's dfdaemon mirror")
	fs.StringVar(&registries, "registries", "docker.io", "comma-separated registries to pull through dfdaemon: `host[:port]`, or http://host:port for a plain-http registry")
	fs.StringVar(&config, "containerd-config", "/etc/containerd/config.toml", "containerd's config `file`, read (never written) to warn when containerd would ignore the host files")
	fs.BoolVar(&o.Undo, "undo", false, "restore every file setup changed, byte for byte, and remove the ones it created")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: dfdaemon %s [flags]\n\n"+
			"Writes containerd's hosts.toml for each registry, with dfdaemon's mirror as the first\n"+
			"host for pulls and the registry as the fallback. Existing files are kept and backed up;\n"+
			"a second run changes nothing; --undo restores them. containerd is never restarted.\n\nFlags:\n", SetupContainerd)
		fs.PrintDefaults()
	}
	if help, err := command.ParseArgs(fs, args); help || err != nil {
		return err
	}
	for _, r := range strings.Split(registries, ",") {
		if r = strings.TrimSpace(r); r != "" {
			o.Registries = append(o.Registries, r)
		}
	}
	changes, err := nodesetup.Run(o)
	for _, c := range changes {
		fmt.Fprintf(stdout, "%s %s\n", c.Action, c.Path)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", SetupContainerd, err)
	}
	if !o.Undo {
		for _, w := range nodesetup.Warnings(config, o.HostsDir) {
			fmt.Fprintf(stderr, "warning: %s\n", w)
		}
	}
	return nil
}
