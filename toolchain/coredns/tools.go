//go:build tools

// The CoreDNS server; the build tag keeps the file out of every build.
package tools

import _ "github.com/coredns/coredns"
