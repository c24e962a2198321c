// Command lazycat is the program of hack/e2e-lazy.sh's test image (built
// static, nothing else in the image): for each file named it prints
// "sha256:<hex> <size> <path>", reading the file through whatever mounted
// the image, here the stargz snapshotter's lazily fetched layers.
package main

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: lazycat FILE...")
		os.Exit(2)
	}
	rc := 0
	for _, p := range os.Args[1:] {
		if err := sum(p); err != nil {
			fmt.Fprintln(os.Stderr, "lazycat:", err)
			rc = 1
		}
	}
	os.Exit(rc)
}

func sum(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	fmt.Printf("sha256:%x %d %s\n", h.Sum(nil), n, p)
	return nil
}
