package cluster

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// RestoreRequest is what restore-to-cluster asks of a cluster's agents.
type RestoreRequest struct {
	Namespace  string // the agents' namespace
	Repository string
	Secret     SecretRef
	Driver     string // empty: the StorageClass's provisioner, or the agents' one driver
	Restore    Restore
}

// ErrNoAgent means no live agent could run the job.
var ErrNoAgent = errors.New("no Ferry agent")

// SubmitRestore checks what can be checked before anything is created (the
// namespace, that the claim is new, the StorageClass, the Secret, a live
// agent for the driver) and creates the restore job.
func SubmitRestore(ctx context.Context, client kubernetes.Interface, dyn dynamic.Interface, req RestoreRequest) (*Job, error) {
	r := req.Restore
	if _, err := client.CoreV1().Namespaces().Get(ctx, r.Namespace, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("namespace %s does not exist in the target cluster; create it first", r.Namespace)
	} else if err != nil {
		return nil, fmt.Errorf("namespace %s: %w", r.Namespace, err)
	}
	if _, err := client.CoreV1().PersistentVolumeClaims(r.Namespace).Get(ctx, r.PVC, metav1.GetOptions{}); err == nil {
		return nil, fmt.Errorf("PVC %s/%s already exists; Ferry restores only into a new claim (delete it, or choose another --pvc)", r.Namespace, r.PVC)
	} else if !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("PVC %s/%s: %w", r.Namespace, r.PVC, err)
	}
	if r.StorageClassName != "" {
		sc, err := client.StorageV1().StorageClasses().Get(ctx, r.StorageClassName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("StorageClass %s does not exist in the target cluster", r.StorageClassName)
		} else if err != nil {
			return nil, fmt.Errorf("StorageClass %s: %w", r.StorageClassName, err)
		}
		if req.Driver != "" && req.Driver != sc.Provisioner {
			return nil, fmt.Errorf("StorageClass %s is for driver %s, not %s", r.StorageClassName, sc.Provisioner, req.Driver)
		}
		req.Driver = sc.Provisioner
	}
	agents, err := LiveAgents(ctx, client, req.Namespace)
	if err != nil {
		return nil, err
	}
	if len(agents) == 0 {
		return nil, fmt.Errorf("%w is running in namespace %s of the target cluster (deploy the agents: see deploy/README.md)", ErrNoAgent, req.Namespace)
	}
	var drivers []string
	for _, a := range agents {
		if !slices.Contains(drivers, a.Driver) {
			drivers = append(drivers, a.Driver)
		}
	}
	switch {
	case req.Driver == "" && len(drivers) == 1:
		req.Driver = drivers[0]
	case req.Driver == "":
		return nil, fmt.Errorf("the agents serve several CSI drivers (%s): choose one with --storage-class or --driver", strings.Join(drivers, ", "))
	case !slices.Contains(drivers, req.Driver):
		return nil, fmt.Errorf("%w for CSI driver %s is running in namespace %s (agents serve: %s)", ErrNoAgent, req.Driver, req.Namespace, strings.Join(drivers, ", "))
	}
	if _, err := client.CoreV1().Secrets(req.Secret.Namespace).Get(ctx, req.Secret.Name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("secret %s/%s (the repository password and credentials) does not exist in the target cluster", req.Secret.Namespace, req.Secret.Name)
	} else if err != nil && !apierrors.IsForbidden(err) { // the agents may read it even if we may not
		return nil, fmt.Errorf("secret %s/%s: %w", req.Secret.Namespace, req.Secret.Name, err)
	}
	j := &Job{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: "restore-",
			Labels:       map[string]string{"app.kubernetes.io/managed-by": "ferry", LabelType: strings.ToLower(TypeRestore)},
		},
		Spec: JobSpec{Type: TypeRestore, Repository: req.Repository, Secret: req.Secret, Driver: req.Driver, Restore: &r},
	}
	jobs := &Jobs{Client: dyn, Namespace: req.Namespace}
	j.Namespace = jobs.Namespace
	u, err := toUnstructured(j)
	if err != nil {
		return nil, err
	}
	out, err := jobs.api().Create(ctx, u, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create the restore job: %w", err)
	}
	return toJob(out)
}

// WaitRestore follows the job, calling show with each new status line,
// until it failed (its message is the error) or it succeeded and its claim
// is Bound.
func WaitRestore(ctx context.Context, client kubernetes.Interface, dyn dynamic.Interface, j *Job, show func(string)) (*Job, error) {
	jobs := &Jobs{Client: dyn, Namespace: j.Namespace}
	last := ""
	say := func(s string) {
		if s != last {
			show(s)
			last = s
		}
	}
	// The same words whether ctx ended during a wait or a request.
	gaveUp := func(cur *Job) (*Job, error) {
		return cur, fmt.Errorf("gave up waiting for restore job %s/%s (it goes on): %w", j.Namespace, j.Name, ctx.Err())
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	pending := time.Now()
	for {
		cur, err := jobs.Get(ctx, j.Name)
		if err != nil && ctx.Err() != nil {
			return gaveUp(j)
		}
		if err != nil {
			return nil, fmt.Errorf("restore job %s: %w", j.Name, err)
		}
		st := cur.Status
		switch st.Phase {
		case PhaseFailed:
			return cur, fmt.Errorf("restore failed: %s", st.Message)
		case PhaseSucceeded:
			r := cur.Spec.Restore
			c, err := client.CoreV1().PersistentVolumeClaims(r.Namespace).Get(ctx, r.PVC, metav1.GetOptions{})
			if err == nil && c.Status.Phase == corev1.ClaimBound {
				return cur, nil
			}
			say(fmt.Sprintf("restored into PersistentVolume %s; waiting for PVC %s/%s to be Bound", st.Volume, r.Namespace, r.PVC))
		case PhaseRunning:
			msg := fmt.Sprintf("running on node %s: %s", st.Agent, st.Message)
			if st.BytesTotal > 0 {
				msg += fmt.Sprintf(" (%s of %s, %d%%)", humanize.IBytes(uint64(st.BytesDone)), humanize.IBytes(uint64(st.BytesTotal)), st.BytesDone*100/st.BytesTotal)
			}
			say(msg)
		default:
			msg := "waiting for an agent to pick the job up"
			if st.Message != "" {
				msg = st.Message
			}
			if st.Phase == "" && time.Since(pending) > time.Minute {
				msg += fmt.Sprintf(" (for %s: are the agents of driver %s running?)", time.Since(pending).Round(time.Second), cur.Spec.Driver)
			}
			say(msg)
		}
		select {
		case <-ctx.Done():
			return gaveUp(cur)
		case <-tick.C:
		}
	}
}
