package notification

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"kubernaut-lite/pkg/audit"
	"kubernaut-lite/pkg/k8s"
)

func TestARequestIsDeliveredToTheFileStatusSaysSentAndItIsAudited(t *testing.T) {
	var mu sync.Mutex
	var statuses []map[string]any
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPatch || !strings.HasSuffix(r.URL.Path, "/notificationrequests/n1/status") {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		var patch map[string]map[string]any
		json.NewDecoder(r.Body).Decode(&patch)
		mu.Lock()
		statuses = append(statuses, patch["status"])
		mu.Unlock()
		w.Write([]byte(`{}`))
	}))
	defer api.Close()
	var events []audit.Event
	ds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var event audit.Event
		json.NewDecoder(r.Body).Decode(&event)
		events = append(events, event)
		w.WriteHeader(http.StatusCreated)
		w.Write([]byte(`{"event_id":"e"}`))
	}))
	defer ds.Close()
	dir := t.TempDir()
	c := &Controller{
		Kube: k8s.New(api.URL, api.Client(), ""), Audit: audit.New(ds.URL), Namespace: "ns1",
		DeliveryDir: dir, Log: slog.New(slog.NewJSONHandler(io.Discard, nil)), Metrics: NewMetrics(),
		Now: func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) },
	}
	var item Request
	item.Metadata.Name = "n1"
	item.Spec.Subject, item.Spec.Body, item.Spec.CorrelationID = "Disk full", "node-3 at 99%", "rr-1"
	c.Reconcile(context.Background(), item)
	text, err := os.ReadFile(filepath.Join(dir, "n1.txt"))
	if err != nil || !strings.Contains(string(text), "Subject: Disk full") || !strings.Contains(string(text), "node-3 at 99%") {
		t.Fatalf("delivered file: %q %v", text, err)
	}
	if len(statuses) != 1 || statuses[0]["phase"] != PhaseSent || statuses[0]["deliveredAt"] != "2026-01-02T03:04:05Z" {
		t.Fatalf("status: %v", statuses)
	}
	if len(events) != 1 || events[0].CorrelationID != "rr-1" || events[0].Outcome != "success" {
		t.Fatalf("audit: %+v", events)
	}
	// Already sent: nothing happens again.
	item.Status.Phase = PhaseSent
	c.Reconcile(context.Background(), item)
	if len(statuses) != 1 {
		t.Fatal("a sent request was delivered again")
	}
	// An unknown channel fails with the reason in the status.
	item.Status.Phase, item.Spec.Channel = "", "pager"
	c.Reconcile(context.Background(), item)
	if statuses[1]["phase"] != PhaseFailed || !strings.Contains(statuses[1]["reason"].(string), "pager") {
		t.Fatalf("status: %v", statuses[1])
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, ".delivery-*"))
	if len(leftovers) != 0 {
		t.Fatalf("temporary files left: %v", leftovers)
	}
}
