//go:build tools

// The etcd server; the build tag keeps the file out of every build.
package tools

import _ "go.etcd.io/etcd/server/v3"
