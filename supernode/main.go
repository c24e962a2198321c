// Command supernode is the Damselfly cluster manager: CDN seed, piece
// scheduler, peer API and admin API. See supernode --help.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/damselfly/damselfly/supernode/cmd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cmd.Run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "supernode: %v\n", err)
		os.Exit(1)
	}
}
