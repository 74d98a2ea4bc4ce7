// Gateway: Alertmanager webhooks in, RemediationRequests out.
//
// Configuration: CONFIG_FILE (default /etc/gateway/config.json: listen
// addresses and DataStorage's URL), POLICY_FILE (default
// /etc/gateway/policy.json: accepted severities, priorities) and
// POD_NAMESPACE (where RemediationRequests go).
package main

import (
	"time"

	"kubernaut-lite/pkg/audit"
	"kubernaut-lite/pkg/gateway"
	"kubernaut-lite/pkg/k8s"
	"kubernaut-lite/pkg/service"
)

type config struct {
	Listen         string `json:"listen"`
	MetricsListen  string `json:"metricsListen"`
	DataStorageURL string `json:"dataStorageURL"`
}

func main() {
	log := service.Logger("gateway")
	cfg := config{Listen: ":8080", MetricsListen: ":9090"}
	if err := service.ReadJSON(service.Env("CONFIG_FILE", "/etc/gateway/config.json"), &cfg); err != nil {
		service.Fatal(log, "config", err)
	}
	var policy gateway.Policy
	if err := service.ReadJSON(service.Env("POLICY_FILE", "/etc/gateway/policy.json"), &policy); err != nil {
		service.Fatal(log, "policy", err)
	}
	if cfg.DataStorageURL == "" {
		service.Fatal(log, "config", errRequired("dataStorageURL"))
	}
	namespace, err := service.RequireEnv("POD_NAMESPACE")
	if err != nil {
		service.Fatal(log, "config", gateway.ErrNoNamespace)
	}
	kube, err := k8s.InCluster()
	if err != nil {
		service.Fatal(log, "kubernetes", err)
	}
	metrics := gateway.NewMetrics()
	gw := &gateway.Gateway{
		Kube: kube, Audit: audit.New(cfg.DataStorageURL), Namespace: namespace,
		Policy: policy, Log: log, Metrics: metrics, Now: time.Now,
	}
	ctx, stop := service.SignalContext()
	defer stop()
	if err := service.Run(ctx, log,
		service.Server{Addr: cfg.Listen, Handler: gw.Handler()},
		service.Server{Addr: cfg.MetricsListen, Handler: service.MetricsHandler(metrics)},
	); err != nil {
		service.Fatal(log, "serve", err)
	}
}

type errRequired string

func (e errRequired) Error() string { return string(e) + " is required in the config file" }
