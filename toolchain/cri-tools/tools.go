//go:build tools

// crictl; the build tag keeps the file out of every build.
package tools

import _ "sigs.k8s.io/cri-tools/cmd/crictl"
