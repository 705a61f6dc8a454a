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
	if err := checkSecretName(namespace, name); err != nil {
		return Secret{}, err
	}
	dir := filepath.Join(string(d), namespace, name)
	data := map[string][]byte{}
	for _, k := range append([]string{"password"}, credentialKeys...) {
		b, err := os.ReadFile(filepath.Join(dir, k))
		if err == nil {
			data[k] = b
		} else if !errors.Is(err, os.ErrNotExist) {
			return Secret{}, fmt.Errorf("secret %s/%s: %w", namespace, name, err)
		}
	}
	if _, ok := data["password"]; !ok {
		return Secret{}, fmt.Errorf("secret %s/%s: no password key (looked in %s)", namespace, name, dir)
	}
	// Never fall back to the agent's own ~/.aws/credentials: point at the
	// Secret's file even when it has none.
	return SecretFromData(namespace, name, data, filepath.Join(dir, "credentials"))
}

func checkSecretName(namespace, name string) error {
	if namespace == "" || name == "" || strings.ContainsAny(namespace+name, "/\\") || strings.HasPrefix(namespace, ".") || strings.HasPrefix(name, ".") {
		return fmt.Errorf("secret %q/%q: invalid name", namespace, name)
	}
	return nil
}

// SecretFromData makes a Secret from a Kubernetes Secret's data (keys as
// for DirSecrets). credentialsFile is the path of the AWS shared
// credentials file for targets with ?profile=NAME; the caller has written
// the Secret's "credentials" key there, if it has one.
func SecretFromData(namespace, name string, data map[string][]byte, credentialsFile string) (Secret, error) {
	pw, ok := data["password"]
	if !ok {
		return Secret{}, fmt.Errorf("secret %s/%s: no password key", namespace, name)
	}
	pw = []byte(strings.TrimRight(string(pw), "\r\n"))
	if len(pw) == 0 {
		return Secret{}, fmt.Errorf("secret %s/%s: empty password", namespace, name)
	}
	env := map[string]string{"AWS_SHARED_CREDENTIALS_FILE": credentialsFile}
	for _, k := range credentialKeys {
		if v, ok := data[k]; ok {
			env[k] = strings.TrimSpace(string(v))
		}
	}
	return Secret{Password: pw, Env: func(k string) string { return env[k] }}, nil
}
