// Package gateway turns Alertmanager webhooks into RemediationRequest
// resources: one per alert fingerprint, a repeated alert only counted on the
// existing resource, and an audit event in DataStorage for each.
package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"kubernaut-lite/pkg/audit"
	"kubernaut-lite/pkg/k8s"
	"kubernaut-lite/pkg/service"
)

// Group and version of the RemediationRequest CRD
// (config/crd/bases/kubernaut.ai_remediationrequests.yaml).
const (
	APIGroupVersion = "kubernaut.ai/v1alpha1"
	Kind            = "RemediationRequest"
	Resource        = "remediationrequests"
	// FingerprintLabel carries the first 63 characters of the fingerprint.
	FingerprintLabel = "kubernaut.ai/signal-fingerprint"
)

// Policy says which alerts become RemediationRequests (policy.json).
type Policy struct {
	// Severities accepted; alerts with another severity are filtered.
	AcceptedSeverities []string `json:"acceptedSeverities"`
	// Priority by severity (e.g. critical → P0); P2 when unlisted.
	PriorityBySeverity map[string]string `json:"priorityBySeverity"`
}

// Accepts says whether an alert of this severity is taken.
func (p Policy) Accepts(severity string) bool {
	for _, s := range p.AcceptedSeverities {
		if s == severity {
			return true
		}
	}
	return false
}

// Alert is one Alertmanager alert.
type Alert struct {
	Status      string            `json:"status"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	StartsAt    string            `json:"startsAt"`
	Fingerprint string            `json:"fingerprint"`
}

// Webhook is Alertmanager's webhook body.
type Webhook struct {
	Version string  `json:"version"`
	Status  string  `json:"status"`
	Alerts  []Alert `json:"alerts"`
}

// Fingerprint is Alertmanager's when given, else the SHA-256 of the sorted
// labels: the same alert always gets the same one.
func Fingerprint(alert Alert) string {
	if alert.Fingerprint != "" {
		return alert.Fingerprint
	}
	keys := make([]string, 0, len(alert.Labels))
	for k := range alert.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	hash := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(hash, "%s=%s\x00", k, alert.Labels[k])
	}
	return hex.EncodeToString(hash.Sum(nil))
}

// ResourceName is the RemediationRequest's name for a fingerprint.
func ResourceName(fingerprint string) string {
	clean := strings.Map(func(r rune) rune {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			return r
		}
		return -1
	}, strings.ToLower(fingerprint))
	if len(clean) > 16 {
		clean = clean[:16]
	}
	return "rr-" + clean
}

// Result is what happened to one alert.
type Result struct {
	Fingerprint        string `json:"fingerprint"`
	Status             string `json:"status"` // created, duplicate or filtered
	RemediationRequest string `json:"remediationRequest,omitempty"`
	OccurrenceCount    int    `json:"occurrenceCount,omitempty"`
	Reason             string `json:"reason,omitempty"`
	AuditEventID       string `json:"auditEventId,omitempty"`
}

// Gateway handles signals.
type Gateway struct {
	Kube      *k8s.Client
	Audit     *audit.Client
	Namespace string
	Policy    Policy
	Log       *slog.Logger
	Metrics   *service.Counters
	Now       func() time.Time

	mu    sync.Mutex
	locks map[string]*sync.Mutex
}

// Metric names.
const (
	MetricSignals      = "gateway_signals_received_total"
	MetricCreated      = "gateway_remediation_requests_created_total"
	MetricDeduplicated = "gateway_signals_deduplicated_total"
	MetricFiltered     = "gateway_signals_filtered_total"
	MetricHTTP         = "gateway_http_requests_total"
)

// NewMetrics declares the Gateway's counters.
func NewMetrics() *service.Counters {
	return service.NewCounters(map[string]string{
		MetricSignals:      "Alerts received.",
		MetricCreated:      "RemediationRequests created.",
		MetricDeduplicated: "Alerts counted on an existing RemediationRequest.",
		MetricFiltered:     "Alerts the policy did not accept.",
		MetricHTTP:         "HTTP requests by method, path and status.",
	})
}

// Handler serves the API: POST /api/v1/signals/prometheus, GET /health and
// GET /ready (the RemediationRequest API is served).
func (g *Gateway) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/signals/prometheus", g.signals)
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		service.WriteJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /ready", g.ready)
	return service.Logged(g.Log, g.Metrics, MetricHTTP, mux)
}

func (g *Gateway) collection() string {
	return fmt.Sprintf("/apis/%s/namespaces/%s/%s", APIGroupVersion, g.Namespace, Resource)
}

func (g *Gateway) ready(w http.ResponseWriter, r *http.Request) {
	if err := g.Kube.Get(r.Context(), g.collection()+"?limit=1", nil); err != nil {
		service.WriteJSON(w, http.StatusServiceUnavailable, map[string]string{
			"status": "not ready", "reason": "RemediationRequest API: " + err.Error(),
		})
		return
	}
	service.WriteJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func (g *Gateway) signals(w http.ResponseWriter, r *http.Request) {
	var hook Webhook
	decoder := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	if err := decoder.Decode(&hook); err != nil {
		service.WriteJSON(w, http.StatusBadRequest, map[string]string{"error": "body is not an Alertmanager webhook: " + err.Error()})
		return
	}
	if len(hook.Alerts) == 0 {
		service.WriteJSON(w, http.StatusBadRequest, map[string]string{"error": "alerts is empty", "field": "alerts"})
		return
	}
	for i, alert := range hook.Alerts {
		if alert.Labels["alertname"] == "" {
			service.WriteJSON(w, http.StatusBadRequest, map[string]string{
				"error": fmt.Sprintf("alerts[%d].labels.alertname is required", i), "field": "alerts.labels.alertname",
			})
			return
		}
	}
	results := make([]Result, 0, len(hook.Alerts))
	status := http.StatusAccepted
	for _, alert := range hook.Alerts {
		g.Metrics.Inc(MetricSignals, "")
		result, err := g.handle(r.Context(), alert)
		if err != nil {
			g.Log.Error("signal failed", "fingerprint", result.Fingerprint, "error", err.Error())
			service.WriteJSON(w, http.StatusBadGateway, map[string]string{"error": err.Error(), "fingerprint": result.Fingerprint})
			return
		}
		if result.Status == "created" {
			status = http.StatusCreated
		}
		results = append(results, result)
	}
	service.WriteJSON(w, status, map[string]any{"results": results})
}

// lock serialises the handling of one fingerprint in this process.
func (g *Gateway) lock(fingerprint string) *sync.Mutex {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.locks == nil {
		g.locks = map[string]*sync.Mutex{}
	}
	if g.locks[fingerprint] == nil {
		g.locks[fingerprint] = &sync.Mutex{}
	}
	return g.locks[fingerprint]
}

type deduplication struct {
	FirstSeen       string `json:"firstSeen"`
	LastSeen        string `json:"lastSeen"`
	OccurrenceCount int    `json:"occurrenceCount"`
}

type remediationRequest struct {
	Metadata struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Deduplication deduplication `json:"deduplication"`
	} `json:"spec"`
}

func (g *Gateway) handle(ctx context.Context, alert Alert) (Result, error) {
	fingerprint := Fingerprint(alert)
	result := Result{Fingerprint: fingerprint, RemediationRequest: ResourceName(fingerprint)}
	severity := alert.Labels["severity"]
	if !g.Policy.Accepts(severity) {
		g.Metrics.Inc(MetricFiltered, "")
		result.Status, result.RemediationRequest = "filtered", ""
		result.Reason = fmt.Sprintf("severity %q is not accepted by the policy (accepted: %s)", severity, strings.Join(g.Policy.AcceptedSeverities, ", "))
		return result, nil
	}
	lock := g.lock(fingerprint)
	lock.Lock()
	defer lock.Unlock()
	now := g.Now().UTC().Format(time.RFC3339)
	path := g.collection() + "/" + result.RemediationRequest
	var existing remediationRequest
	err := g.Kube.Get(ctx, path, &existing)
	switch {
	case err == nil:
		return g.deduplicate(ctx, alert, result, path, existing, now)
	case !k8s.IsNotFound(err):
		return result, fmt.Errorf("looking up RemediationRequest %s: %w", result.RemediationRequest, err)
	}
	if err := g.Kube.Create(ctx, g.collection(), g.object(alert, result, now), nil); err != nil {
		if k8s.IsConflict(err) {
			// Another replica created it meanwhile: count this one on it.
			if err := g.Kube.Get(ctx, path, &existing); err != nil {
				return result, err
			}
			return g.deduplicate(ctx, alert, result, path, existing, now)
		}
		return result, fmt.Errorf("creating RemediationRequest %s: %w", result.RemediationRequest, err)
	}
	g.Metrics.Inc(MetricCreated, "")
	result.Status, result.OccurrenceCount = "created", 1
	g.Log.Info("remediation request created", "name", result.RemediationRequest, "fingerprint", fingerprint)
	result.AuditEventID = g.audit(ctx, "gateway.crd.created", "created", alert, result)
	return result, nil
}

func (g *Gateway) deduplicate(ctx context.Context, alert Alert, result Result, path string, existing remediationRequest, now string) (Result, error) {
	dedup := existing.Spec.Deduplication
	dedup.OccurrenceCount++
	dedup.LastSeen = now
	patch := map[string]any{"spec": map[string]any{"deduplication": dedup}}
	if err := g.Kube.MergePatch(ctx, path, patch, nil); err != nil {
		return result, fmt.Errorf("counting a duplicate on RemediationRequest %s: %w", result.RemediationRequest, err)
	}
	g.Metrics.Inc(MetricDeduplicated, "")
	result.Status, result.OccurrenceCount = "duplicate", dedup.OccurrenceCount
	g.Log.Info("signal deduplicated", "name", result.RemediationRequest, "occurrences", dedup.OccurrenceCount)
	result.AuditEventID = g.audit(ctx, "gateway.signal.deduplicated", "deduplicated", alert, result)
	return result, nil
}

// audit records the event; DataStorage being down does not lose the signal
// (the resource exists), so a failure is logged, not returned.
func (g *Gateway) audit(ctx context.Context, eventType, action string, alert Alert, result Result) string {
	id, err := g.Audit.Record(ctx, audit.Event{
		EventType:     eventType,
		CorrelationID: result.RemediationRequest,
		Category:      "gateway",
		Action:        action,
		Outcome:       "success",
		ActorID:       "gateway",
		ResourceType:  Kind,
		ResourceID:    g.Namespace + "/" + result.RemediationRequest,
		Data: map[string]any{
			"fingerprint":      result.Fingerprint,
			"alertname":        alert.Labels["alertname"],
			"occurrence_count": result.OccurrenceCount,
		},
	})
	if err != nil {
		g.Log.Error("audit event not recorded", "error", err.Error())
		return ""
	}
	return id
}

func (g *Gateway) object(alert Alert, result Result, now string) map[string]any {
	severity := alert.Labels["severity"]
	priority := g.Policy.PriorityBySeverity[severity]
	if priority == "" {
		priority = "P2"
	}
	label := result.Fingerprint
	if len(label) > 63 {
		label = label[:63]
	}
	target := map[string]string{"namespace": alert.Labels["namespace"]}
	for _, kind := range []string{"pod", "deployment", "node"} {
		if name := alert.Labels[kind]; name != "" {
			target["kind"], target["name"] = strings.ToUpper(kind[:1])+kind[1:], name
			break
		}
	}
	firing := alert.StartsAt
	if firing == "" {
		firing = now
	}
	return map[string]any{
		"apiVersion": APIGroupVersion,
		"kind":       Kind,
		"metadata": map[string]any{
			"name":      result.RemediationRequest,
			"namespace": g.Namespace,
			"labels":    map[string]string{FingerprintLabel: label, "app.kubernetes.io/managed-by": "gateway"},
		},
		"spec": map[string]any{
			"signalFingerprint": result.Fingerprint,
			"signalName":        alert.Labels["alertname"],
			"signalType":        "prometheus-alert",
			"severity":          severity,
			"priority":          priority,
			"targetResource":    target,
			"firingTime":        firing,
			"receivedTime":      now,
			"signalLabels":      alert.Labels,
			"signalAnnotations": alert.Annotations,
			"deduplication":     deduplication{FirstSeen: now, LastSeen: now, OccurrenceCount: 1},
		},
	}
}

// ErrNoNamespace is returned by config checks when the namespace is unknown.
var ErrNoNamespace = errors.New("POD_NAMESPACE is required (set it from the downward API)")
