// Package notification is a controller of NotificationRequest resources: it
// delivers each one to the file channel (a folder, in the E2E cluster a
// hostPath backed by a folder of the host), records the outcome in the
// resource's status and an audit event in DataStorage.
package notification

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"kubernaut-lite/pkg/audit"
	"kubernaut-lite/pkg/k8s"
	"kubernaut-lite/pkg/service"
)

// Group, version and resource of the CRD
// (config/crd/bases/kubernaut.ai_notificationrequests.yaml).
const (
	APIGroupVersion = "kubernaut.ai/v1alpha1"
	Resource        = "notificationrequests"
	PhaseSent       = "Sent"
	PhaseFailed     = "Failed"
)

// Request is the part of a NotificationRequest the controller reads.
type Request struct {
	Metadata struct {
		Name            string `json:"name"`
		Namespace       string `json:"namespace"`
		ResourceVersion string `json:"resourceVersion"`
	} `json:"metadata"`
	Spec struct {
		Subject       string   `json:"subject"`
		Body          string   `json:"body"`
		Channel       string   `json:"channel"`
		Recipients    []string `json:"recipients"`
		CorrelationID string   `json:"correlationId"`
	} `json:"spec"`
	Status struct {
		Phase string `json:"phase"`
	} `json:"status"`
}

// Controller delivers NotificationRequests of one namespace.
type Controller struct {
	Kube        *k8s.Client
	Audit       *audit.Client
	Namespace   string
	DeliveryDir string
	Log         *slog.Logger
	Metrics     *service.Counters
	Now         func() time.Time

	synced atomic.Bool
}

// Synced says whether the first list succeeded (readiness).
func (c *Controller) Synced() bool { return c.synced.Load() }

// Metric names.
const (
	MetricDeliveries = "notification_deliveries_total"
	MetricHTTP       = "notification_http_requests_total"
)

// NewMetrics declares the controller's counters.
func NewMetrics() *service.Counters {
	return service.NewCounters(map[string]string{
		MetricDeliveries: "Deliveries by channel and outcome.",
		MetricHTTP:       "HTTP requests by method, path and status.",
	})
}

func (c *Controller) collection() string {
	return fmt.Sprintf("/apis/%s/namespaces/%s/%s", APIGroupVersion, c.Namespace, Resource)
}

// Run lists, then watches, until ctx ends; a closed or failed watch lists
// again (after a second), so nothing is missed.
func (c *Controller) Run(ctx context.Context) {
	for ctx.Err() == nil {
		if err := c.listAndWatch(ctx); err != nil && ctx.Err() == nil {
			c.Log.Error("watch", "error", err.Error())
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (c *Controller) listAndWatch(ctx context.Context) error {
	var list struct {
		Metadata struct {
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
		Items []Request `json:"items"`
	}
	if err := c.Kube.Get(ctx, c.collection(), &list); err != nil {
		return err
	}
	c.synced.Store(true)
	for _, item := range list.Items {
		c.Reconcile(ctx, item)
	}
	events, err := c.Kube.Watch(ctx, c.collection(), list.Metadata.ResourceVersion)
	if err != nil {
		return err
	}
	for event := range events {
		if event.Type != "ADDED" && event.Type != "MODIFIED" {
			continue
		}
		var item Request
		if err := json.Unmarshal(event.Object, &item); err != nil {
			c.Log.Error("watch event", "error", err.Error())
			continue
		}
		c.Reconcile(ctx, item)
	}
	return nil
}

// FileName is where a request is delivered in the folder.
func FileName(name string) string { return name + ".txt" }

// Reconcile delivers a request not delivered yet; one already Sent or
// Failed is left as it is.
func (c *Controller) Reconcile(ctx context.Context, item Request) {
	if item.Status.Phase == PhaseSent || item.Status.Phase == PhaseFailed {
		return
	}
	name := item.Metadata.Name
	channel := item.Spec.Channel
	if channel == "" {
		channel = "file"
	}
	status := map[string]any{"channel": channel}
	path, err := c.deliver(item, channel)
	outcome := "success"
	if err != nil {
		outcome = "failure"
		status["phase"], status["reason"] = PhaseFailed, err.Error()
		c.Log.Error("delivery failed", "name", name, "error", err.Error())
	} else {
		status["phase"], status["path"] = PhaseSent, path
		status["deliveredAt"] = c.Now().UTC().Format(time.RFC3339)
		c.Log.Info("delivered", "name", name, "path", path)
	}
	c.Metrics.Inc(MetricDeliveries, fmt.Sprintf(`channel=%q,outcome=%q`, channel, outcome))
	if err := c.Kube.MergePatch(ctx, c.collection()+"/"+name+"/status", map[string]any{"status": status}, nil); err != nil {
		c.Log.Error("status update", "name", name, "error", err.Error())
		return
	}
	correlation := item.Spec.CorrelationID
	if correlation == "" {
		correlation = name
	}
	if _, err := c.Audit.Record(ctx, audit.Event{
		EventType: "notification.message.sent", CorrelationID: correlation,
		Category: "notification", Action: "sent", Outcome: outcome, ActorID: "notification-controller",
		ResourceType: "NotificationRequest", ResourceID: c.Namespace + "/" + name,
		Data: map[string]any{"channel": channel, "path": path, "subject": item.Spec.Subject},
	}); err != nil {
		c.Log.Error("audit event not recorded", "name", name, "error", err.Error())
	}
}

// deliver writes the message atomically (a temporary file renamed), so a
// reader never sees half of it.
func (c *Controller) deliver(item Request, channel string) (string, error) {
	if channel != "file" {
		return "", fmt.Errorf("channel %q is not supported (supported: file)", channel)
	}
	var text strings.Builder
	fmt.Fprintf(&text, "Subject: %s\n", item.Spec.Subject)
	if len(item.Spec.Recipients) > 0 {
		fmt.Fprintf(&text, "To: %s\n", strings.Join(item.Spec.Recipients, ", "))
	}
	fmt.Fprintf(&text, "\n%s\n", item.Spec.Body)
	dest := filepath.Join(c.DeliveryDir, FileName(item.Metadata.Name))
	tmp, err := os.CreateTemp(c.DeliveryDir, ".delivery-*")
	if err != nil {
		return "", fmt.Errorf("delivery folder %s: %w", c.DeliveryDir, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(text.String()); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	return dest, os.Rename(tmp.Name(), dest)
}

// FixPermissions makes the delivery folder writable by the controller's
// user (the init container runs this as root). The folder keeps its owner
// (on the host, whoever ran the E2E), who can still remove what was
// delivered; a chown to the controller's user would take that away.
func FixPermissions(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.Chmod(dir, 0o777)
}
