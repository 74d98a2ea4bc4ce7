// Package audit records audit events in DataStorage
// (POST /api/v1/audit/events).
package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Event is DataStorage's audit event.
type Event struct {
	EventType     string `json:"event_type"`
	CorrelationID string `json:"correlation_id"`
	Category      string `json:"event_category,omitempty"`
	Action        string `json:"event_action,omitempty"`
	Outcome       string `json:"event_outcome,omitempty"`
	ActorID       string `json:"actor_id,omitempty"`
	ResourceType  string `json:"resource_type,omitempty"`
	ResourceID    string `json:"resource_id,omitempty"`
	Data          any    `json:"event_data,omitempty"`
}

// Client writes to one DataStorage.
type Client struct {
	BaseURL string
	HTTP    *http.Client
}

// New is a client of DataStorage at baseURL (e.g. http://datastorage:8080).
func New(baseURL string) *Client {
	return &Client{BaseURL: strings.TrimSuffix(baseURL, "/"), HTTP: &http.Client{Timeout: 5 * time.Second}}
}

// Record writes event, retrying three times (DataStorage may be restarting);
// it returns the event id DataStorage gave it.
func (c *Client) Record(ctx context.Context, event Event) (string, error) {
	body, err := json.Marshal(event)
	if err != nil {
		return "", err
	}
	var last error
	for attempt := 0; attempt < 3; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return "", ctx.Err()
			case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
			}
		}
		var id string
		id, last = c.post(ctx, body)
		if last == nil {
			return id, nil
		}
	}
	return "", fmt.Errorf("audit event %s for %s not recorded in DataStorage at %s: %w", event.EventType, event.CorrelationID, c.BaseURL, last)
}

func (c *Client) post(ctx context.Context, body []byte) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.BaseURL+"/api/v1/audit/events", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("%d: %s", resp.StatusCode, strings.TrimSpace(string(data)))
	}
	var created struct {
		EventID string `json:"event_id"`
	}
	if err := json.Unmarshal(data, &created); err != nil {
		return "", fmt.Errorf("answer %q: %w", data, err)
	}
	return created.EventID, nil
}
