package gateway

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"kubernaut-lite/pkg/audit"
	"kubernaut-lite/pkg/k8s"
)

// fakeAPI keeps RemediationRequests in memory, as the API server would.
type fakeAPI struct {
	mu      sync.Mutex
	objects map[string]map[string]any
	patches int
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	collection := "/apis/kubernaut.ai/v1alpha1/namespaces/ns1/remediationrequests"
	name := strings.TrimPrefix(r.URL.Path, collection+"/")
	switch {
	case r.Method == http.MethodGet && r.URL.Path == collection:
		w.Write([]byte(`{"items":[]}`))
	case r.Method == http.MethodPost && r.URL.Path == collection:
		var object map[string]any
		json.NewDecoder(r.Body).Decode(&object)
		n := object["metadata"].(map[string]any)["name"].(string)
		if _, ok := f.objects[n]; ok {
			w.WriteHeader(http.StatusConflict)
			return
		}
		f.objects[n] = object
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(object)
	case r.Method == http.MethodGet:
		object, ok := f.objects[name]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			w.Write([]byte(`{"reason":"NotFound","message":"not found"}`))
			return
		}
		json.NewEncoder(w).Encode(object)
	case r.Method == http.MethodPatch:
		if r.Header.Get("Content-Type") != "application/merge-patch+json" {
			w.WriteHeader(http.StatusUnsupportedMediaType)
			return
		}
		var patch map[string]any
		json.NewDecoder(r.Body).Decode(&patch)
		spec := f.objects[name]["spec"].(map[string]any)
		spec["deduplication"] = patch["spec"].(map[string]any)["deduplication"]
		f.patches++
		w.Write([]byte(`{}`))
	default:
		w.WriteHeader(http.StatusMethodNotAllowed)
	}
}

func setup(t *testing.T) (*httptest.Server, *fakeAPI, *[]audit.Event) {
	api := &fakeAPI{objects: map[string]map[string]any{}}
	kube := httptest.NewServer(api)
	t.Cleanup(kube.Close)
	var events []audit.Event
	var mu sync.Mutex
	ds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var event audit.Event
		json.NewDecoder(r.Body).Decode(&event)
		mu.Lock()
		events = append(events, event)
		mu.Unlock()
		w.WriteHeader(http.StatusCreated)
		w.Write([]byte(`{"event_id":"e1"}`))
	}))
	t.Cleanup(ds.Close)
	gw := &Gateway{
		Kube:      k8s.New(kube.URL, kube.Client(), "token"),
		Audit:     audit.New(ds.URL),
		Namespace: "ns1",
		Policy:    Policy{AcceptedSeverities: []string{"critical", "warning"}, PriorityBySeverity: map[string]string{"critical": "P0"}},
		Log:       slog.New(slog.NewJSONHandler(io.Discard, nil)),
		Metrics:   NewMetrics(),
		Now:       func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) },
	}
	server := httptest.NewServer(gw.Handler())
	t.Cleanup(server.Close)
	return server, api, &events
}

func post(t *testing.T, server *httptest.Server, body string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Post(server.URL+"/api/v1/signals/prometheus", "application/json", bytes.NewBufferString(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

const alert = `{"version":"4","status":"firing","alerts":[{"status":"firing",
 "labels":{"alertname":"HighMemory","severity":"critical","namespace":"prod","pod":"api-1"},
 "annotations":{"summary":"memory"},"startsAt":"2026-01-02T03:00:00Z"}]}`

func TestAnAlertCreatesOneRemediationRequestAndARepeatIsCounted(t *testing.T) {
	server, api, events := setup(t)
	code, out := post(t, server, alert)
	if code != http.StatusCreated {
		t.Fatalf("first alert: %d %v", code, out)
	}
	result := out["results"].([]any)[0].(map[string]any)
	name := result["remediationRequest"].(string)
	object := api.objects[name]
	spec := object["spec"].(map[string]any)
	if spec["signalFingerprint"] != result["fingerprint"] || spec["priority"] != "P0" || spec["signalName"] != "HighMemory" {
		t.Fatalf("spec: %v", spec)
	}
	if target := spec["targetResource"].(map[string]any); target["kind"] != "Pod" || target["name"] != "api-1" {
		t.Fatalf("target: %v", target)
	}
	code, out = post(t, server, alert)
	result = out["results"].([]any)[0].(map[string]any)
	if code != http.StatusAccepted || result["status"] != "duplicate" || result["occurrenceCount"] != 2.0 {
		t.Fatalf("second alert: %d %v", code, out)
	}
	if len(api.objects) != 1 || api.patches != 1 {
		t.Fatalf("objects %d patches %d", len(api.objects), api.patches)
	}
	if len(*events) != 2 || (*events)[0].EventType != "gateway.crd.created" || (*events)[1].EventType != "gateway.signal.deduplicated" || (*events)[0].CorrelationID != name {
		t.Fatalf("audit events: %+v", *events)
	}
}

func TestFingerprintsIgnoreLabelOrderAndPreferAlertmanagers(t *testing.T) {
	a := Alert{Labels: map[string]string{"a": "1", "b": "2"}}
	b := Alert{Labels: map[string]string{"b": "2", "a": "1"}}
	if Fingerprint(a) != Fingerprint(b) {
		t.Fatal("label order changed the fingerprint")
	}
	if Fingerprint(Alert{Fingerprint: "ABC123", Labels: a.Labels}) != "ABC123" {
		t.Fatal("Alertmanager's fingerprint not used")
	}
	if got := ResourceName("ABC-123_def4567890abcdef"); got != "rr-abc123def4567890" {
		t.Fatalf("name %q", got)
	}
}

func TestBadInputIsRefusedNamingTheFieldAndFilteredSeveritiesCreateNothing(t *testing.T) {
	server, api, _ := setup(t)
	code, out := post(t, server, `{"alerts":[{"labels":{"severity":"critical"}}]}`)
	if code != http.StatusBadRequest || !strings.Contains(out["error"].(string), "alertname") {
		t.Fatalf("%d %v", code, out)
	}
	code, _ = post(t, server, `not json`)
	if code != http.StatusBadRequest {
		t.Fatalf("not json: %d", code)
	}
	code, out = post(t, server, `{"alerts":[{"labels":{"alertname":"x","severity":"info"}}]}`)
	result := out["results"].([]any)[0].(map[string]any)
	if code != http.StatusAccepted || result["status"] != "filtered" || len(api.objects) != 0 {
		t.Fatalf("%d %v", code, out)
	}
}
