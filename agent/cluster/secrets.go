package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/ferrydr/ferry/agent/replicate"
)

// Secrets reads repository Secrets from the API (keys as for
// replicate.DirSecrets). The agent's RBAC decides which namespaces it may
// read them from (deploy/ grants only its own).
type Secrets struct {
	Client kubernetes.Interface
	// Dir receives the Secret's "credentials" key, when it has one, as a
	// file of mode 0600 (the S3 client reads profiles from a file); it
	// should be on a memory filesystem.
	Dir string
}

// Secret reads one Secret.
func (s Secrets) Secret(ctx context.Context, namespace, name string) (replicate.Secret, error) {
	sec, err := s.Client.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return replicate.Secret{}, fmt.Errorf("secret %s/%s does not exist", namespace, name)
	case apierrors.IsForbidden(err):
		return replicate.Secret{}, fmt.Errorf("secret %s/%s: the agent may not read it (its RBAC allows Secrets in its own namespace only)", namespace, name)
	case err != nil:
		return replicate.Secret{}, fmt.Errorf("secret %s/%s: %w", namespace, name, err)
	}
	dir := filepath.Join(s.Dir, string(sec.UID))
	creds := filepath.Join(dir, "credentials")
	if c, ok := sec.Data["credentials"]; ok {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return replicate.Secret{}, err
		}
		tmp := creds + ".tmp"
		if err := os.WriteFile(tmp, c, 0o600); err != nil {
			return replicate.Secret{}, err
		}
		if err := os.Rename(tmp, creds); err != nil {
			return replicate.Secret{}, err
		}
	}
	return replicate.SecretFromData(namespace, name, sec.Data, creds)
}
