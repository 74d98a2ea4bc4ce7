// Package k8s is the little of the Kubernetes API the stand-in services use:
// JSON requests with the pod's service-account token, and watches. The
// services need a handful of calls on one or two resources, so this is plain
// net/http rather than client-go.
package k8s

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

const serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// Client calls one API server.
type Client struct {
	base      string
	http      *http.Client
	token     string
	tokenPath string
}

// APIError is a non-2xx answer, with the API server's own message.
type APIError struct {
	Method, Path string
	Code         int
	Reason       string
	Message      string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s %s: %d %s: %s", e.Method, e.Path, e.Code, e.Reason, e.Message)
}

// IsNotFound and IsConflict tell the two answers callers act on.
func IsNotFound(err error) bool { return code(err) == http.StatusNotFound }
func IsConflict(err error) bool { return code(err) == http.StatusConflict }

func code(err error) int {
	var apiErr *APIError
	if errors.As(err, &apiErr) {
		return apiErr.Code
	}
	return 0
}

// InCluster is the client a pod gets: the API server from the
// KUBERNETES_SERVICE_* variables, its CA and the token (re-read on every
// request, since bound tokens rotate) from the service-account volume.
func InCluster() (*Client, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return nil, errors.New("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are unset: not running in a pod")
	}
	ca, err := os.ReadFile(serviceAccountDir + "/ca.crt")
	if err != nil {
		return nil, fmt.Errorf("service-account CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, fmt.Errorf("service-account CA %s/ca.crt holds no certificate", serviceAccountDir)
	}
	transport := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
	}
	return &Client{
		base:      "https://" + net.JoinHostPort(host, port),
		http:      &http.Client{Transport: transport},
		tokenPath: serviceAccountDir + "/token",
	}, nil
}

// New is a client of base with a fixed token (tests, or outside a cluster).
func New(base string, httpClient *http.Client, token string) *Client {
	return &Client{base: strings.TrimSuffix(base, "/"), http: httpClient, token: token}
}

func (c *Client) bearer() (string, error) {
	if c.tokenPath == "" {
		return c.token, nil
	}
	token, err := os.ReadFile(c.tokenPath)
	if err != nil {
		return "", fmt.Errorf("service-account token: %w", err)
	}
	return strings.TrimSpace(string(token)), nil
}

func (c *Client) request(ctx context.Context, method, path, contentType string, body any) (*http.Request, error) {
	var reader io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		reader = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, reader)
	if err != nil {
		return nil, err
	}
	token, err := c.bearer()
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	return req, nil
}

// Do sends body (JSON) and decodes a 2xx answer into out (when not nil).
// Every call is bounded by timeout 10 s unless ctx ends sooner.
func (c *Client) Do(ctx context.Context, method, path, contentType string, body, out any) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := c.request(ctx, method, path, contentType, body)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var status struct{ Reason, Message string }
		_ = json.Unmarshal(data, &status)
		if status.Message == "" {
			status.Message = strings.TrimSpace(string(data))
		}
		return &APIError{Method: method, Path: path, Code: resp.StatusCode, Reason: status.Reason, Message: status.Message}
	}
	if out != nil {
		return json.Unmarshal(data, out)
	}
	return nil
}

// Get, Create, MergePatch: the verbs the services use.
func (c *Client) Get(ctx context.Context, path string, out any) error {
	return c.Do(ctx, http.MethodGet, path, "", nil, out)
}

func (c *Client) Create(ctx context.Context, collection string, object, out any) error {
	return c.Do(ctx, http.MethodPost, collection, "application/json", object, out)
}

func (c *Client) MergePatch(ctx context.Context, path string, patch, out any) error {
	return c.Do(ctx, http.MethodPatch, path, "application/merge-patch+json", patch, out)
}

// Event is one watch event.
type Event struct {
	Type   string          `json:"type"`
	Object json.RawMessage `json:"object"`
}

// Watch streams the events of collection from resourceVersion until ctx ends
// or the server closes the watch (then the channel closes; the caller lists
// and watches again).
func (c *Client) Watch(ctx context.Context, collection, resourceVersion string) (<-chan Event, error) {
	sep := "?"
	if strings.Contains(collection, "?") {
		sep = "&"
	}
	path := fmt.Sprintf("%s%swatch=1&allowWatchBookmarks=false&timeoutSeconds=300&resourceVersion=%s", collection, sep, resourceVersion)
	req, err := c.request(ctx, http.MethodGet, path, "", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return nil, &APIError{Method: http.MethodGet, Path: path, Code: resp.StatusCode, Message: strings.TrimSpace(string(data))}
	}
	events := make(chan Event)
	go func() {
		defer close(events)
		defer resp.Body.Close()
		scanner := bufio.NewScanner(resp.Body)
		scanner.Buffer(make([]byte, 64<<10), 16<<20)
		for scanner.Scan() {
			var event Event
			if json.Unmarshal(scanner.Bytes(), &event) != nil {
				continue
			}
			select {
			case events <- event:
			case <-ctx.Done():
				return
			}
		}
	}()
	return events, nil
}
