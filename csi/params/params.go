// Package params parses the ferry.dev/ parameters a VolumeSnapshotClass
// passes to CreateSnapshot, and the external-snapshotter's parameters that
// name the snapshot.
//
//	ferry.dev/repository        required: the targets, as for --repo (comma-separated URLs)
//	ferry.dev/secret-name       required: the Secret holding the repository password and S3 credentials
//	ferry.dev/secret-namespace  the Secret's namespace (default: the agents' namespace, see Parse)
//	ferry.dev/name              the series name in the repository (default: NAMESPACE/PVC, else the volume ID)
//	ferry.dev/replicate         "true" (default) or "false": keep the parameters but do not replicate
//	ferry.dev/keep-last         retention, applied to the series after each replication: keep the N newest
//	ferry.dev/keep-hourly       ... and the newest of each of the last N hours,
//	ferry.dev/keep-daily        days (UTC),
//	ferry.dev/keep-weekly       ISO weeks
//	ferry.dev/keep-monthly      and months that have snapshots (see package retention); 0 to 10000 each,
//	                            none (or all 0): keep every snapshot
//
// Any other key under ferry.dev/ is an error, so a typo never silently
// turns replication off.
package params

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/ferrydr/ferry/transport/objstore"
	"github.com/ferrydr/ferry/transport/repo/retention"
)

// Prefix marks Ferry's parameters.
const Prefix = "ferry.dev/"

const (
	KeyRepository      = Prefix + "repository"
	KeySecretName      = Prefix + "secret-name"
	KeySecretNamespace = Prefix + "secret-namespace"
	KeyName            = Prefix + "name"
	KeyReplicate       = Prefix + "replicate"
	KeyKeepLast        = Prefix + "keep-last"
	KeyKeepHourly      = Prefix + "keep-hourly"
	KeyKeepDaily       = Prefix + "keep-daily"
	KeyKeepWeekly      = Prefix + "keep-weekly"
	KeyKeepMonthly     = Prefix + "keep-monthly"

	// Set by the external-snapshotter with --extra-create-metadata.
	KeySnapshotName        = "csi.storage.k8s.io/volumesnapshot/name"
	KeySnapshotNamespace   = "csi.storage.k8s.io/volumesnapshot/namespace"
	KeySnapshotContentName = "csi.storage.k8s.io/volumesnapshotcontent/name"
)

// Replication is what the parameters ask of Ferry.
type Replication struct {
	Repository      string `json:"repository"`
	SecretName      string `json:"secret_name"`
	SecretNamespace string `json:"secret_namespace"`
	Name            string `json:"name,omitempty"`
	// Keep, when set, is the retention the agent applies to the series
	// after each replication (forget only; prune runs on its own).
	Keep *retention.Policy `json:"keep,omitempty"`

	// From the external-snapshotter, when present.
	SnapshotName        string `json:"volumesnapshot_name,omitempty"`
	SnapshotNamespace   string `json:"volumesnapshot_namespace,omitempty"`
	SnapshotContentName string `json:"volumesnapshotcontent_name,omitempty"`
}

// Error names the parameter that is wrong.
type Error struct {
	Key    string
	Reason string
}

func (e *Error) Error() string { return fmt.Sprintf("parameter %s: %s", e.Key, e.Reason) }

// Parse reads the parameters of a CreateSnapshot call. It returns nil when
// the call does not ask for replication (no ferry.dev/ keys, or replicate
// is "false"), and the parameters to forward to the driver: every key but
// Ferry's.
//
// secretNamespace is the Secret's namespace when the parameters name none:
// the agents' namespace, the one namespace whose Secrets they may read in
// a cluster. Empty (an agent without --kube) makes ferry.dev/secret-namespace
// required. It is not the VolumeSnapshot's namespace: an application's
// namespace should neither hold the repository's keys nor grant them.
func Parse(in map[string]string, secretNamespace string) (*Replication, map[string]string, error) {
	forward := make(map[string]string, len(in))
	ours := map[string]string{}
	for k, v := range in {
		if strings.HasPrefix(k, Prefix) {
			ours[k] = v
		} else {
			forward[k] = v
		}
	}
	if len(ours) == 0 {
		return nil, forward, nil
	}
	keys := make([]string, 0, len(ours))
	for k := range ours {
		keys = append(keys, k)
	}
	sort.Strings(keys) // report the same error every time
	r := &Replication{
		SnapshotName:        in[KeySnapshotName],
		SnapshotNamespace:   in[KeySnapshotNamespace],
		SnapshotContentName: in[KeySnapshotContentName],
	}
	replicate := true
	var keep retention.Policy
	keepRules := map[string]*int{
		KeyKeepLast: &keep.Last, KeyKeepHourly: &keep.Hourly, KeyKeepDaily: &keep.Daily,
		KeyKeepWeekly: &keep.Weekly, KeyKeepMonthly: &keep.Monthly,
	}
	for _, k := range keys {
		v := ours[k]
		switch k {
		case KeyRepository:
			if _, err := objstore.ParseRepo(v); err != nil {
				return nil, nil, &Error{k, err.Error()}
			}
			r.Repository = v
		case KeySecretName:
			if err := dnsSubdomain(v); err != nil {
				return nil, nil, &Error{k, err.Error()}
			}
			r.SecretName = v
		case KeySecretNamespace:
			if err := dnsLabel(v); err != nil {
				return nil, nil, &Error{k, err.Error()}
			}
			r.SecretNamespace = v
		case KeyName:
			if v == "" || len(v) > 253 || strings.ContainsFunc(v, func(c rune) bool { return c < 0x20 || c == 0x7f }) {
				return nil, nil, &Error{k, "want 1 to 253 printable characters"}
			}
			r.Name = v
		case KeyReplicate:
			switch v {
			case "true":
			case "false":
				replicate = false
			default:
				return nil, nil, &Error{k, fmt.Sprintf("%q: want true or false", v)}
			}
		case KeyKeepLast, KeyKeepHourly, KeyKeepDaily, KeyKeepWeekly, KeyKeepMonthly:
			n, err := keepCount(v)
			if err != nil {
				return nil, nil, &Error{k, err.Error()}
			}
			*keepRules[k] = n
		default:
			return nil, nil, &Error{k, "unknown Ferry parameter (known: repository, secret-name, secret-namespace, name, replicate, keep-last, keep-hourly, keep-daily, keep-weekly, keep-monthly)"}
		}
	}
	if !keep.IsZero() {
		r.Keep = &keep
	}
	if !replicate {
		return nil, forward, nil
	}
	if r.Repository == "" {
		return nil, nil, &Error{KeyRepository, "required"}
	}
	if r.SecretName == "" {
		return nil, nil, &Error{KeySecretName, "required"}
	}
	if r.SecretNamespace == "" {
		r.SecretNamespace = secretNamespace
	}
	if r.SecretNamespace == "" {
		return nil, nil, &Error{KeySecretNamespace, "required: a hook without --kube knows no agents' namespace to default to"}
	}
	return r, forward, nil
}

// SeriesName is the name snapshots of this volume take in the repository.
func (r *Replication) SeriesName(pvcNamespace, pvc, volumeID string) string {
	switch {
	case r.Name != "":
		return r.Name
	case pvcNamespace != "" && pvc != "":
		return pvcNamespace + "/" + pvc
	default:
		return volumeID
	}
}

// maxKeep bounds a keep rule: ten thousand of anything is more than a
// repository should hold of one volume.
const maxKeep = 10000

// keepCount parses a keep rule's count: decimal digits only.
func keepCount(v string) (int, error) {
	bad := fmt.Errorf("%q: want a whole number from 0 to %d", v, maxKeep)
	if v == "" || len(v) > 5 || strings.ContainsFunc(v, func(c rune) bool { return c < '0' || c > '9' }) {
		return 0, bad
	}
	n, err := strconv.Atoi(v)
	if err != nil || n > maxKeep {
		return 0, bad
	}
	return n, nil
}

func dnsLabel(s string) error {
	if len(s) == 0 || len(s) > 63 {
		return fmt.Errorf("%q: want a DNS label of 1 to 63 characters", s)
	}
	for i, c := range s {
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' && i > 0 && i < len(s)-1
		if !ok {
			return fmt.Errorf("%q: want lower-case letters, digits and inner '-'", s)
		}
	}
	return nil
}

func dnsSubdomain(s string) error {
	if len(s) == 0 || len(s) > 253 {
		return fmt.Errorf("%q: want a DNS subdomain of 1 to 253 characters", s)
	}
	for _, part := range strings.Split(s, ".") {
		if err := dnsLabel(part); err != nil {
			return fmt.Errorf("%q: want lower-case letters, digits, inner '-' and '.'", s)
		}
	}
	return nil
}
