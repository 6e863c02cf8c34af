//go:build tools

// Package tools pins the helm CLI that the chart tests build (tests/helm/helm.sh): `helm
// template` renders deploy/helm/meshroute for `kubectl apply --dry-run=server` against the
// test API server.
package tools

import _ "helm.sh/helm/v4/cmd/helm"
