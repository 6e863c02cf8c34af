//go:build tools

// kube-proxy is built from this module (same k8s.io/kubernetes version as kube-testenv) for
// the end-to-end tests that send traffic through a real kube-proxy; this import keeps its
// dependencies in go.mod and go.sum. Build: go build k8s.io/kubernetes/cmd/kube-proxy.
package main

import _ "k8s.io/kubernetes/cmd/kube-proxy/app"
