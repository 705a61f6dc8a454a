// Command ferry replicates volumes into an erasure-coded repository and
// restores them. Run "ferry help" for the subcommands.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ferrydr/ferry/agent/restore"
	"github.com/ferrydr/ferry/transport/crypt"
	"github.com/ferrydr/ferry/transport/repo"
	"github.com/ferrydr/ferry/verify"
)

// Exit codes.
const (
	exitOK       = 0
	exitError    = 1 // anything that went wrong: bad repository, unreachable, wrong password ...
	exitUsage    = 2 // bad command line
	exitDataLost = 3 // the data cannot be restored or did not verify
	exitDegraded = 4 // verify: damage that repair can fix, nothing lost
)

type usageError struct{ error }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRoot()
	err := root.ExecuteContext(ctx)
	os.Exit(report(err))
}

func report(err error) int {
	if err == nil {
		return exitOK
	}
	msg := strings.ReplaceAll(err.Error(), "\n", " ")
	fmt.Fprintf(os.Stderr, "ferry: %s\n", msg)
	var ue usageError
	switch {
	case errors.As(err, &ue):
		return exitUsage
	case errors.Is(err, restore.ErrDataLost), errors.Is(err, restore.ErrMismatch):
		return exitDataLost
	case errors.Is(err, verify.ErrDegraded):
		return exitDegraded
	default:
		return exitError
	}
}

type globals struct {
	opened *repo.Repo // set once a command opened the repository
	// described holds the targets (1-based) whose loss the command has
	// already told the user about in its own words.
	described    map[int]bool
	repo         string
	passwordFile string
	logLevel     string
	cacheDir     string
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "ferry",
		Short:         "Replicate volumes to erasure-coded object storage and restore them",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
				return usageError{fmt.Errorf("--log-level %q: want debug, info, warn or error", g.logLevel)}
			}
			slog.SetDefault(slog.New(newCLIHandler(os.Stderr, lvl)))
			return nil
		},
	}
	// Only after success: a failed command's error already names what failed.
	root.PersistentPostRun = func(*cobra.Command, []string) {
		if g.opened == nil {
			return
		}
		for _, t := range g.opened.Targets {
			if err := t.Down(); err != nil && !g.described[t.Index+1] {
				fmt.Fprintf(os.Stderr, "ferry: warning: target %d (%s) unavailable: %v\n", t.Index+1, t.Store.Location(), err)
			}
		}
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	pf := root.PersistentFlags()
	pf.StringVar(&g.repo, "repo", os.Getenv("FERRY_REPO"), "comma-separated targets: s3://host:port/bucket[/prefix], s3+http://..., file:///path (env FERRY_REPO)")
	pf.StringVar(&g.passwordFile, "password-file", os.Getenv("FERRY_PASSWORD_FILE"), "file holding the repository password (env FERRY_PASSWORD_FILE; else env FERRY_PASSWORD)")
	pf.StringVar(&g.cacheDir, "cache-dir", defaultCacheDir(), "local directory for the repository index (copies of its index objects, and the index itself instead of memory); empty keeps it in memory (env FERRY_CACHE_DIR)")
	pf.StringVar(&g.logLevel, "log-level", envOr("FERRY_LOG_LEVEL", "warn"), "log level: debug, info, warn, error (env FERRY_LOG_LEVEL)")
	root.AddCommand(initCmd(g), backupCmd(g), snapshotsCmd(g), restoreCmd(g), verifyCmd(g), repairCmd(g), forgetCmd(g), pruneCmd(g), restoreToClusterCmd(g), benchCmd())
	root.AddCommand(agentCmds()...)
	return root
}

// defaultCacheDir is $FERRY_CACHE_DIR, else ferry/repos in the user's
// cache directory ($XDG_CACHE_HOME or ~/.cache; the test environment's
// binaries are in ferry/ beside it), else none.
func defaultCacheDir() string {
	if d, ok := os.LookupEnv("FERRY_CACHE_DIR"); ok {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "ferry", "repos")
	}
	return ""
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// describe notes that the command told the user about the loss of target
// (1-based), so that it is not reported twice.
func (g *globals) describe(target int) {
	if g.described == nil {
		g.described = map[int]bool{}
	}
	g.described[target] = true
}

func (g *globals) password() ([]byte, error) {
	if g.passwordFile != "" {
		b, err := os.ReadFile(g.passwordFile)
		if err != nil {
			return nil, fmt.Errorf("password file: %w", err)
		}
		pw := []byte(strings.TrimRight(string(b), "\r\n"))
		if len(pw) == 0 {
			return nil, fmt.Errorf("password file %s is empty", g.passwordFile)
		}
		return pw, nil
	}
	if pw := os.Getenv("FERRY_PASSWORD"); pw != "" {
		return []byte(pw), nil
	}
	return nil, usageError{errors.New("no password: set FERRY_PASSWORD or use --password-file")}
}

// friendly turns the errors users cause into one plain sentence.
func friendly(err error) error {
	switch {
	case errors.Is(err, crypt.ErrWrongPassword):
		return errors.New("wrong password: no key in the repository opens with it")
	case errors.Is(err, repo.ErrNotRepository):
		return fmt.Errorf("no Ferry repository at --repo: %w", err)
	}
	return err
}
