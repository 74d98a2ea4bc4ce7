//go:build tools

// The kind CLI; the build tag keeps the file out of every build.
package tools

import _ "sigs.k8s.io/kind"
