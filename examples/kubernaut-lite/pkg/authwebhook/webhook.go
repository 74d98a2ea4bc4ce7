// Package authwebhook is an admission webhook for kubernaut's resources:
// the mutating side stamps who changed a resource's status
// (status.lastModifiedBy), the validating side refuses to delete a
// NotificationRequest unless it was approved for deletion.
package authwebhook

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"kubernaut-lite/pkg/service"
)

// ApprovalAnnotation must be "true" on a NotificationRequest for a DELETE
// to be allowed.
const ApprovalAnnotation = "kubernaut.ai/deletion-approved"

// Review is the part of an admission.k8s.io/v1 AdmissionReview used here.
type Review struct {
	APIVersion string    `json:"apiVersion"`
	Kind       string    `json:"kind"`
	Request    *Request  `json:"request,omitempty"`
	Response   *Response `json:"response,omitempty"`
}

// Request is the API server's question.
type Request struct {
	UID         string          `json:"uid"`
	Kind        GroupKind       `json:"kind"`
	Resource    GroupResource   `json:"resource"`
	SubResource string          `json:"subResource"`
	Name        string          `json:"name"`
	Namespace   string          `json:"namespace"`
	Operation   string          `json:"operation"`
	UserInfo    UserInfo        `json:"userInfo"`
	Object      json.RawMessage `json:"object"`
	OldObject   json.RawMessage `json:"oldObject"`
}

type GroupKind struct{ Group, Version, Kind string }
type GroupResource struct{ Group, Version, Resource string }

type UserInfo struct {
	Username string `json:"username"`
}

// Response is the webhook's answer.
type Response struct {
	UID       string  `json:"uid"`
	Allowed   bool    `json:"allowed"`
	Result    *Status `json:"status,omitempty"`
	PatchType string  `json:"patchType,omitempty"`
	Patch     []byte  `json:"patch,omitempty"`
}

type Status struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// Webhook serves /mutate, /validate, /healthz and /readyz.
type Webhook struct {
	Log     *slog.Logger
	Metrics *service.Counters
}

const (
	MetricDecisions = "authwebhook_decisions_total"
	MetricHTTP      = "authwebhook_http_requests_total"
)

// NewMetrics declares the webhook's counters.
func NewMetrics() *service.Counters {
	return service.NewCounters(map[string]string{
		MetricDecisions: "Admission decisions by webhook and outcome.",
		MetricHTTP:      "HTTP requests by method, path and status.",
	})
}

// Handler is the HTTPS handler.
func (w *Webhook) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /mutate", w.serve("mutate", Mutate))
	mux.HandleFunc("POST /validate", w.serve("validate", Validate))
	ok := func(rw http.ResponseWriter, _ *http.Request) {
		service.WriteJSON(rw, http.StatusOK, map[string]string{"status": "ok"})
	}
	mux.HandleFunc("GET /healthz", ok)
	mux.HandleFunc("GET /readyz", ok)
	mux.Handle("GET /metrics", w.Metrics)
	return service.Logged(w.Log, w.Metrics, MetricHTTP, mux)
}

func (w *Webhook) serve(name string, decide func(*Request) *Response) http.HandlerFunc {
	return func(rw http.ResponseWriter, r *http.Request) {
		var review Review
		if err := json.NewDecoder(http.MaxBytesReader(rw, r.Body, 4<<20)).Decode(&review); err != nil || review.Request == nil {
			service.WriteJSON(rw, http.StatusBadRequest, map[string]string{"error": "body is not an AdmissionReview with a request"})
			return
		}
		response := decide(review.Request)
		response.UID = review.Request.UID
		outcome := "allowed"
		if !response.Allowed {
			outcome = "denied"
		}
		w.Metrics.Inc(MetricDecisions, fmt.Sprintf(`webhook=%q,outcome=%q`, name, outcome))
		w.Log.Info("admission", "webhook", name, "operation", review.Request.Operation,
			"resource", review.Request.Resource.Resource, "subresource", review.Request.SubResource,
			"name", review.Request.Name, "user", review.Request.UserInfo.Username, "allowed", response.Allowed)
		service.WriteJSON(rw, http.StatusOK, Review{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview", Response: response})
	}
}

// Mutate stamps status.lastModifiedBy on an UPDATE of a status subresource.
func Mutate(req *Request) *Response {
	if req.Operation != "UPDATE" || req.SubResource != "status" {
		return &Response{Allowed: true}
	}
	var object struct {
		Status map[string]any `json:"status"`
	}
	_ = json.Unmarshal(req.Object, &object)
	var patch []map[string]any
	if object.Status == nil {
		patch = append(patch, map[string]any{"op": "add", "path": "/status", "value": map[string]any{}})
	}
	patch = append(patch, map[string]any{"op": "add", "path": "/status/lastModifiedBy", "value": req.UserInfo.Username})
	data, _ := json.Marshal(patch)
	return &Response{Allowed: true, PatchType: "JSONPatch", Patch: data}
}

// Validate refuses a DELETE of a NotificationRequest that was not approved;
// Kubernetes' own controllers (namespace deletion, garbage collection) may
// always delete.
func Validate(req *Request) *Response {
	if req.Operation != "DELETE" || req.Resource.Resource != "notificationrequests" {
		return &Response{Allowed: true}
	}
	if strings.HasPrefix(req.UserInfo.Username, "system:serviceaccount:kube-system:") {
		return &Response{Allowed: true}
	}
	var old struct {
		Metadata struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
	}
	_ = json.Unmarshal(req.OldObject, &old)
	if old.Metadata.Annotations[ApprovalAnnotation] == "true" {
		return &Response{Allowed: true}
	}
	return &Response{Allowed: false, Result: &Status{
		Code: http.StatusForbidden,
		Message: fmt.Sprintf("deleting NotificationRequest %s/%s needs the annotation %s=true (requested by %s)",
			req.Namespace, req.Name, ApprovalAnnotation, req.UserInfo.Username),
	}}
}
