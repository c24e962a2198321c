// Command dfdaemon is the Damselfly node daemon: a registry mirror and
// forward proxy whose blob downloads go peer to peer, and the node's
// long-lived peer cache. See dfdaemon --help.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/damselfly/damselfly/dfdaemon/cmd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cmd.Run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "dfdaemon: %v\n", err)
		os.Exit(1)
	}
}
