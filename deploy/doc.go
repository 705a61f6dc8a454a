// Package deploy holds Ferry's Kubernetes manifests (a kustomization:
// namespace, FerryJob CRD, RBAC, the agent DaemonSet; the hook sidecar as
// a kustomize Component; examples) and, in its tests, the proof that they
// apply to a real API server and grant no more than the code uses. It has
// no Go code of its own. See README.md.
package deploy
