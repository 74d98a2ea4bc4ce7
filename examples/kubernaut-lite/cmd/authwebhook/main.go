// AuthWebhook: the admission webhook, on HTTPS.
//
// Configuration: LISTEN (default :9443), TLS_CERT and TLS_KEY (default
// /etc/webhook/certs/tls.crt and tls.key: the Secret the E2E setup makes
// for authwebhook.<namespace>.svc).
package main

import (
	"crypto/tls"

	"kubernaut-lite/pkg/authwebhook"
	"kubernaut-lite/pkg/service"
)

func main() {
	log := service.Logger("authwebhook")
	certFile := service.Env("TLS_CERT", "/etc/webhook/certs/tls.crt")
	keyFile := service.Env("TLS_KEY", "/etc/webhook/certs/tls.key")
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		service.Fatal(log, "tls", err)
	}
	webhook := &authwebhook.Webhook{Log: log, Metrics: authwebhook.NewMetrics()}
	ctx, stop := service.SignalContext()
	defer stop()
	if err := service.Run(ctx, log, service.Server{
		Addr:    service.Env("LISTEN", ":9443"),
		Handler: webhook.Handler(),
		TLS:     &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	}); err != nil {
		service.Fatal(log, "serve", err)
	}
}
