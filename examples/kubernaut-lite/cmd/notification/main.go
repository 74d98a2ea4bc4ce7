// Notification: a controller delivering NotificationRequests.
//
//	notification                        run the controller
//	notification fix-permissions <dir>  make <dir> writable by the controller (init container)
//
// Configuration: POD_NAMESPACE (watched), DELIVERY_DIR (default
// /tmp/e2e-notifications), DATASTORAGE_URL (required), METRICS_ADDR
// (default :9186), PROBE_ADDR (default :8081: /healthz, /readyz).
package main

import (
	"fmt"
	"net/http"
	"os"
	"time"

	"kubernaut-lite/pkg/audit"
	"kubernaut-lite/pkg/k8s"
	"kubernaut-lite/pkg/notification"
	"kubernaut-lite/pkg/service"
)

func main() {
	log := service.Logger("notification")
	deliveryDir := service.Env("DELIVERY_DIR", "/tmp/e2e-notifications")
	if len(os.Args) > 1 {
		if os.Args[1] != "fix-permissions" || len(os.Args) != 3 {
			fmt.Fprintln(os.Stderr, "usage: notification [fix-permissions <dir>]")
			os.Exit(2)
		}
		if err := notification.FixPermissions(os.Args[2]); err != nil {
			service.Fatal(log, "fix-permissions", err)
		}
		log.Info("delivery folder ready", "dir", os.Args[2])
		return
	}
	namespace, err := service.RequireEnv("POD_NAMESPACE")
	if err != nil {
		service.Fatal(log, "config", err)
	}
	dataStorage, err := service.RequireEnv("DATASTORAGE_URL")
	if err != nil {
		service.Fatal(log, "config", err)
	}
	if info, err := os.Stat(deliveryDir); err != nil || !info.IsDir() {
		service.Fatal(log, "config", fmt.Errorf("DELIVERY_DIR %s is not a folder: %v", deliveryDir, err))
	}
	kube, err := k8s.InCluster()
	if err != nil {
		service.Fatal(log, "kubernetes", err)
	}
	metrics := notification.NewMetrics()
	controller := &notification.Controller{
		Kube: kube, Audit: audit.New(dataStorage), Namespace: namespace,
		DeliveryDir: deliveryDir, Log: log, Metrics: metrics, Now: time.Now,
	}
	probes := http.NewServeMux()
	ok := func(w http.ResponseWriter, _ *http.Request) {
		service.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}
	probes.HandleFunc("GET /healthz", ok)
	probes.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !controller.Synced() {
			service.WriteJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": "NotificationRequests not listed yet"})
			return
		}
		ok(w, r)
	})
	ctx, stop := service.SignalContext()
	defer stop()
	go controller.Run(ctx)
	if err := service.Run(ctx, log,
		service.Server{Addr: service.Env("PROBE_ADDR", ":8081"), Handler: probes},
		service.Server{Addr: service.Env("METRICS_ADDR", ":9186"), Handler: service.MetricsHandler(metrics)},
	); err != nil {
		service.Fatal(log, "serve", err)
	}
}
