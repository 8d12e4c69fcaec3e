package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/fulfilld/fulfilld/internal/stripeapi"
)

// Set at build time: -ldflags "-X main.version=v1.2.3 -X main.commit=abc123".
var (
	version = "dev"
	commit  = "unknown"
)

func (a *app) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print version, commit, Go and stripe-go versions, and the pinned Stripe API version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			stripeGo, rev := "unknown", commit
			if info, ok := debug.ReadBuildInfo(); ok {
				for _, dep := range info.Deps {
					if dep.Path == "github.com/stripe/stripe-go/v76" {
						stripeGo = dep.Version
					}
				}
				for _, s := range info.Settings {
					if s.Key == "vcs.revision" && rev == "unknown" {
						rev = s.Value
					}
				}
			}
			fmt.Fprintf(a.stdout, "fulfilld %s\ncommit %s\ngo %s\nstripe-go %s\nstripe api version %s\n",
				version, rev, runtime.Version(), stripeGo, stripeapi.APIVersion)
		},
	}
}
