// Command kind-e2e-cni is the pod network of clusters whose node image the
// project builds offline: one pod per node (a host-network DaemonSet) that
//
//   - writes the node's CNI config: the ptp plugin (a veth per pod, routed
//     through the node, so kube-proxy's rules see every packet) with
//     host-local addresses from the node's spec.podCIDRs, and portmap;
//   - routes every other node's pod ranges through that node's InternalIP.
//
// It does what kind's default network (kindnetd) does for a single-network
// cluster, with nothing else: no network policy, no IPv6 masquerade agent.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

const confName = "10-kind-e2e.conflist"

func main() {
	nodeName := os.Getenv("NODE_NAME")
	if nodeName == "" {
		log.Fatal("NODE_NAME is not set (the DaemonSet passes spec.nodeName)")
	}
	confDir := getenv("CNI_CONF_DIR", "/etc/cni/net.d")

	config, err := rest.InClusterConfig()
	if err != nil {
		log.Fatalf("in-cluster config: %v", err)
	}
	// kind passes the API server's own address: the Service address needs
	// kube-proxy, which may not have programmed it yet.
	if endpoint := os.Getenv("CONTROL_PLANE_ENDPOINT"); endpoint != "" {
		config.Host = "https://" + endpoint
	}
	client := kubernetes.NewForConfigOrDie(config)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	factory := informers.NewSharedInformerFactory(client, 10*time.Minute)
	nodes := factory.Core().V1().Nodes()
	changed := make(chan struct{}, 1)
	poke := func(interface{}) {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	nodes.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    poke,
		UpdateFunc: func(_, n interface{}) { poke(n) },
		DeleteFunc: poke,
	})
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), nodes.Informer().HasSynced) {
		log.Fatal("the node list never synced")
	}
	log.Printf("kind-e2e-cni on %s: watching nodes", nodeName)

	var lastConf []byte
	routes := map[string]string{}
	resync := time.NewTicker(30 * time.Second)
	defer resync.Stop()
	for {
		all, err := nodes.Lister().List(labels.Everything())
		if err != nil {
			// Without the node list nothing is known: change nothing.
			log.Printf("listing nodes: %v", err)
			all = nil
		}
		wanted := map[string]string{}
		for _, node := range all {
			if node.Name == nodeName {
				conf, err := renderConf(node)
				if err != nil {
					log.Printf("%v", err)
				} else if !reflect.DeepEqual(conf, lastConf) {
					if err := writeAtomic(filepath.Join(confDir, confName), conf); err != nil {
						log.Printf("writing the CNI config: %v", err)
					} else {
						lastConf = conf
						log.Printf("wrote %s for %v", confName, podCIDRs(node))
					}
				}
				continue
			}
			gateway := internalIP(node)
			if gateway == "" {
				continue
			}
			for _, cidr := range podCIDRs(node) {
				wanted[cidr] = gateway
			}
		}
		for cidr, gateway := range wanted {
			if routes[cidr] == gateway {
				continue
			}
			if err := replaceRoute(cidr, gateway); err != nil {
				log.Printf("route %s via %s: %v", cidr, gateway, err)
				continue
			}
			routes[cidr] = gateway
			log.Printf("route %s via %s", cidr, gateway)
		}
		for cidr, gateway := range routes {
			if err != nil {
				break
			}
			if _, ok := wanted[cidr]; !ok {
				if err := deleteRoute(cidr, gateway); err != nil {
					log.Printf("removing route %s: %v", cidr, err)
				}
				delete(routes, cidr)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-resync.C:
			// Routes can be lost to a restarted network stack: replace them
			// again (RouteReplace is idempotent; removals still need the map).
			for cidr := range routes {
				routes[cidr] = ""
			}
		}
	}
}

func getenv(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}

func podCIDRs(node *corev1.Node) []string {
	if len(node.Spec.PodCIDRs) > 0 {
		return node.Spec.PodCIDRs
	}
	if node.Spec.PodCIDR != "" {
		return []string{node.Spec.PodCIDR}
	}
	return nil
}

func internalIP(node *corev1.Node) string {
	for _, a := range node.Status.Addresses {
		if a.Type == corev1.NodeInternalIP && net.ParseIP(a.Address).To4() != nil {
			return a.Address
		}
	}
	return ""
}

// renderConf is the node's CNI config list, or an error while the node has
// no pod range yet (kube-controller-manager assigns it shortly after join).
func renderConf(node *corev1.Node) ([]byte, error) {
	cidrs := podCIDRs(node)
	if len(cidrs) == 0 {
		return nil, fmt.Errorf("node %s has no pod CIDR yet", node.Name)
	}
	var ranges [][]map[string]string
	for _, cidr := range cidrs {
		ranges = append(ranges, []map[string]string{{"subnet": cidr}})
	}
	conf := map[string]interface{}{
		"cniVersion": "0.4.0",
		"name":       "kind-e2e",
		"plugins": []interface{}{
			map[string]interface{}{
				"type":   "ptp",
				"ipMasq": true,
				"mtu":    1500,
				"ipam": map[string]interface{}{
					"type":   "host-local",
					"ranges": ranges,
					"routes": []map[string]string{{"dst": "0.0.0.0/0"}},
				},
			},
			map[string]interface{}{
				"type":         "portmap",
				"capabilities": map[string]bool{"portMappings": true},
			},
		},
	}
	return json.MarshalIndent(conf, "", "  ")
}

func writeAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".kind-e2e-cni-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func route(cidr, gateway string) (*netlink.Route, error) {
	_, dst, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil, err
	}
	gw := net.ParseIP(gateway)
	if gw == nil {
		return nil, fmt.Errorf("bad gateway %q", gateway)
	}
	return &netlink.Route{Dst: dst, Gw: gw}, nil
}

func replaceRoute(cidr, gateway string) error {
	r, err := route(cidr, gateway)
	if err != nil {
		return err
	}
	return netlink.RouteReplace(r)
}

func deleteRoute(cidr, gateway string) error {
	r, err := route(cidr, gateway)
	if err != nil {
		return err
	}
	return netlink.RouteDel(r)
}
