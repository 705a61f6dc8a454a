package replicate

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/ferrydr/ferry/transport/objstore"
)

// Secret is what a repository needs to be opened.
type Secret struct {
	Password []byte
	Env      objstore.Env // S3 credentials settings, see objstore.OpenEnv
}

// Secrets finds the Secret a VolumeSnapshotClass names.
type Secrets interface {
	Secret(ctx context.Context, namespace, name string) (Secret, error)
}

// DirSecrets reads Secrets from DIR/<namespace>/<name>/<key>: the layout of
// Kubernetes Secrets mounted as files. Keys:
//
//	password                 the repository password (required)
//	AWS_ACCESS_KEY_ID        S3 credentials for every target without ?profile=
//	AWS_SECRET_ACCESS_KEY
//	AWS_SESSION_TOKEN        optional
//	credentials              optional AWS shared credentials file, for targets with ?profile=NAME
type DirSecrets string

var credentialKeys = []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}

// Secret reads one Secret.
func (d DirSecrets) Secret(_ context.Context, namespace, name string) (Secret, error) {
	if namespace == "" || name == "" || strings.ContainsAny(namespace+name, "/\\") || strings.HasPrefix(namespace, ".") || strings.HasPrefix(name, ".") {
		return Secret{}, fmt.Errorf("secret %q/%q: invalid name", namespace, name)
	}
	dir := filepath.Join(string(d), namespace, name)
	pw, err := os.ReadFile(filepath.Join(dir, "password"))
	if errors.Is(err, os.ErrNotExist) {
		return Secret{}, fmt.Errorf("secret %s/%s: no password key (looked in %s)", namespace, name, dir)
	}
	if err != nil {
		return Secret{}, fmt.Errorf("secret %s/%s: %w", namespace, name, err)
	}
	pw = []byte(strings.TrimRight(string(pw), "\r\n"))
	if len(pw) == 0 {
		return Secret{}, fmt.Errorf("secret %s/%s: empty password", namespace, name)
	}
	env := map[string]string{}
	for _, k := range credentialKeys {
		b, err := os.ReadFile(filepath.Join(dir, k))
		if err == nil {
			env[k] = strings.TrimSpace(string(b))
		} else if !errors.Is(err, os.ErrNotExist) {
			return Secret{}, fmt.Errorf("secret %s/%s: %w", namespace, name, err)
		}
	}
	if f := filepath.Join(dir, "credentials"); fileExists(f) {
		env["AWS_SHARED_CREDENTIALS_FILE"] = f
	} else {
		// Never fall back to the agent's own ~/.aws/credentials.
		env["AWS_SHARED_CREDENTIALS_FILE"] = filepath.Join(dir, "credentials")
	}
	return Secret{Password: pw, Env: func(k string) string { return env[k] }}, nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
