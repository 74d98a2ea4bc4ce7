// Command kind-e2e-pause holds a pod sandbox's namespaces: as the sandbox's
// PID 1 it reaps orphaned children and exits on SIGINT or SIGTERM. The node
// image tags it as the sandbox ("pause") image kubeadm and containerd expect.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range signals {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
