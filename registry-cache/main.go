// Command registry-cache is the Damselfly manifest hot-cache: a pull-through
// cache of manifests in front of one registry, serving the OCI distribution
// read API. See registry-cache --help.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/damselfly/damselfly/registry-cache/cmd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cmd.Run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "registry-cache: %v\n", err)
		os.Exit(1)
	}
}
