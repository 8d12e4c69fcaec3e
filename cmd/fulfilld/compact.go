package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/fulfilld/fulfilld/internal/store/boltstore"
)

func (a *app) compactCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "compact",
		Short: "Rewrite the bbolt store without its free pages (stop the daemon first); prints the sizes before and after",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.setup(nil); err != nil {
				return err
			}
			if a.shared() {
				return usagef("compact rewrites the bbolt file; with store.postgres, PostgreSQL's autovacuum reclaims the space " +
					"(VACUUM FULL would rewrite the tables, locking out every instance meanwhile)")
			}
			sz, err := boltstore.Compact(a.cfg.Store.Path, time.Second)
			if errors.Is(err, boltstore.ErrHeld) {
				return &usageError{fmt.Errorf("store.path: %w: stop `fulfilld run` (systemctl stop fulfilld), compact, then start it again", err)}
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "compacted %s: %s before, %s after (%s freed)\n",
				a.cfg.Store.Path, byteSize(sz.Before), byteSize(sz.After), byteSize(sz.Before-sz.After))
			return nil
		},
	}
}

// byteSize renders a size the way an operator reads one.
func byteSize(n int64) string {
	const unit = 1024
	if n < unit && n > -unit {
		return fmt.Sprintf("%d B", n)
	}
	f, suffix := float64(n), "KMGTPE"
	i := -1
	for f >= unit || f <= -unit {
		f /= unit
		i++
	}
	return fmt.Sprintf("%.1f %ciB", f, suffix[i])
}
