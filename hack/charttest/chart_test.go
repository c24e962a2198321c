package charttest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

// chartDir is the chart, from this module's directory.
const chartDir = "../../charts/damselfly"

// helm returns the helm binary: $HELM, or bin/tools/helm of the project.
func helm(t *testing.T) string {
	t.Helper()
	if h := os.Getenv("HELM"); h != "" {
		return h
	}
	p, err := filepath.Abs("../../bin/tools/helm")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Skipf("no helm (set HELM or run make chart): %v", err)
	}
	return p
}

// render runs helm template with args and returns its documents by kind.
func render(t *testing.T, args ...string) map[string][][]byte {
	t.Helper()
	cmd := exec.Command(helm(t), append([]string{"template", "rel", chartDir, "--namespace", "dl"}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("helm template %v: %v\n%s", args, err, errb.String())
	}
	docs := map[string][][]byte{}
	for _, doc := range strings.Split(out.String(), "\n---") {
		doc = strings.TrimSpace(doc)
		if doc == "" || strings.Trim(doc, "-\n ") == "" {
			continue
		}
		var head struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatalf("a rendered document is not YAML: %v\n%s", err, doc)
		}
		if head.Kind == "" {
			continue // a comment-only document
		}
		docs[head.Kind] = append(docs[head.Kind], []byte(doc))
	}
	return docs
}

// strict decodes doc into v, refusing unknown fields.
func strict(t *testing.T, doc []byte, v any) {
	t.Helper()
	if err := yaml.UnmarshalStrict(doc, v); err != nil {
		t.Fatalf("%T: %v\n%s", v, err, doc)
	}
}

// objects decodes every rendered object into its API type and returns the
// ones the assertions read.
type objects struct {
	daemonSet   appsv1.DaemonSet
	statefulSet appsv1.StatefulSet
	services    []corev1.Service
	configMaps  map[string]corev1.ConfigMap
	secrets     []corev1.Secret
	pdbs        []policyv1.PodDisruptionBudget
	monitors    int
}

func decode(t *testing.T, docs map[string][][]byte) objects {
	t.Helper()
	o := objects{configMaps: map[string]corev1.ConfigMap{}}
	for kind, list := range docs {
		for _, doc := range list {
			switch kind {
			case "DaemonSet":
				strict(t, doc, &o.daemonSet)
			case "StatefulSet":
				strict(t, doc, &o.statefulSet)
			case "Service":
				var s corev1.Service
				strict(t, doc, &s)
				o.services = append(o.services, s)
			case "ConfigMap":
				var c corev1.ConfigMap
				strict(t, doc, &c)
				o.configMaps[c.Name] = c
			case "Secret":
				var s corev1.Secret
				strict(t, doc, &s)
				o.secrets = append(o.secrets, s)
			case "PodDisruptionBudget":
				var p policyv1.PodDisruptionBudget
				strict(t, doc, &p)
				o.pdbs = append(o.pdbs, p)
			case "ServiceMonitor":
				var m struct {
					APIVersion string         `json:"apiVersion"`
					Kind       string         `json:"kind"`
					Metadata   map[string]any `json:"metadata"`
					Spec       struct {
						Selector  map[string]any   `json:"selector"`
						Endpoints []map[string]any `json:"endpoints"`
					} `json:"spec"`
				}
				strict(t, doc, &m)
				if len(m.Spec.Endpoints) == 0 {
					t.Fatal("ServiceMonitor without endpoints")
				}
				o.monitors++
			default:
				t.Fatalf("unexpected kind %s rendered", kind)
			}
		}
	}
	return o
}

func TestDefaults(t *testing.T) {
	o := decode(t, render(t))
	if o.monitors != 0 {
		t.Error("a ServiceMonitor is rendered by default")
	}
	if got := *o.statefulSet.Spec.Replicas; got != 1 {
		t.Errorf("supernode replicas %d, want 1", got)
	}
	if len(o.pdbs) != 1 || o.pdbs[0].Spec.MaxUnavailable == nil {
		t.Errorf("want one PodDisruptionBudget with maxUnavailable, got %d", len(o.pdbs))
	}
	if len(o.secrets) != 1 || len(o.secrets[0].Data["cluster-token"]) < 32 || len(o.secrets[0].Data["admin-token"]) < 32 {
		t.Error("want a generated Secret with a cluster and an admin token")
	}
	headless := false
	for _, s := range o.services {
		if s.Spec.ClusterIP == corev1.ClusterIPNone && s.Spec.PublishNotReadyAddresses {
			headless = s.Name == o.statefulSet.Spec.ServiceName
		}
	}
	if !headless {
		t.Error("the StatefulSet's serviceName is not a headless Service publishing not-ready addresses")
	}
	checkPod(t, "supernode", o.statefulSet.Spec.Template.Spec, o.statefulSet.Spec.Template.Annotations)
	ds := o.daemonSet.Spec.Template.Spec
	checkPod(t, "dfdaemon", ds, o.daemonSet.Spec.Template.Annotations)
	if !ds.HostNetwork {
		t.Error("dfdaemon is not on the host network")
	}
	if len(ds.InitContainers) != 1 || ds.InitContainers[0].Args[0] != "setup-containerd" {
		t.Errorf("want the setup-containerd init container, got %+v", ds.InitContainers)
	}
	if c := ds.Containers[0]; c.Lifecycle != nil {
		t.Error("a preStop undo by default")
	}
	if c := ds.Containers[0]; c.LivenessProbe.HTTPGet.Host != "127.0.0.1" || c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Error("dfdaemon's probes are not on the node's loopback /healthz and /readyz")
	}
	if ds.Volumes[1].HostPath == nil {
		t.Error("the cache is not a hostPath")
	}
}

// checkPod asserts what every pod of the chart has: probes, resources, a
// non-escalating security context, the cluster token from the Secret and
// a config checksum.
func checkPod(t *testing.T, name string, spec corev1.PodSpec, annotations map[string]string) {
	t.Helper()
	if annotations["checksum/config"] == "" {
		t.Errorf("%s: no config checksum annotation", name)
	}
	c := spec.Containers[0]
	if c.LivenessProbe == nil || c.ReadinessProbe == nil {
		t.Errorf("%s: probes missing", name)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
		t.Errorf("%s: no resource requests", name)
	}
	sc := c.SecurityContext
	if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil || len(sc.Capabilities.Drop) == 0 {
		t.Errorf("%s: security context does not drop capabilities and escalation", name)
	}
	token := false
	for _, e := range c.Env {
		if e.Name == "DAMSELFLY_CLUSTER_TOKEN" && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			token = true
		}
	}
	if !token {
		t.Errorf("%s: no cluster token from the Secret", name)
	}
}

// With three supernodes every dfdaemon's config names all three by their
// stable names; the ServiceMonitor and the undo hook appear when asked;
// an existing Secret replaces the generated one.
func TestThreeSupernodes(t *testing.T) {
	o := decode(t, render(t, "--set", "supernode.replicaCount=3", "--set", "serviceMonitor.enabled=true",
		"--set", "containerdSetup.undoOnUninstall=true", "--set", "tokens.existingSecret=mine",
		"--set", "supernode.persistence.enabled=true"))
	if got := *o.statefulSet.Spec.Replicas; got != 3 {
		t.Errorf("replicas %d, want 3", got)
	}
	cm, ok := o.configMaps["rel-damselfly-dfdaemon"]
	if !ok {
		t.Fatal("no dfdaemon ConfigMap")
	}
	var cfg struct {
		Nodes []string `json:"nodes"`
	}
	if err := yaml.Unmarshal([]byte(cm.Data["dfdaemon.yaml"]), &cfg); err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range 3 {
		want = append(want, fmt.Sprintf("rel-damselfly-supernode-%d.%s.dl.svc:8002", i, o.statefulSet.Spec.ServiceName))
	}
	if strings.Join(cfg.Nodes, ",") != strings.Join(want, ",") {
		t.Errorf("dfdaemon's supernodes %v, want %v", cfg.Nodes, want)
	}
	if o.monitors != 1 {
		t.Error("no ServiceMonitor when enabled")
	}
	if len(o.secrets) != 0 {
		t.Error("a Secret is generated although existingSecret is set")
	}
	c := o.daemonSet.Spec.Template.Spec.Containers[0]
	if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || !strings.Contains(strings.Join(c.Lifecycle.PreStop.Exec.Command, " "), "--undo") {
		t.Error("no preStop undo although asked")
	}
	for _, e := range c.Env {
		if e.Name == "DAMSELFLY_CLUSTER_TOKEN" && e.ValueFrom.SecretKeyRef.Name != "mine" {
			t.Errorf("cluster token from %q, want the existing Secret", e.ValueFrom.SecretKeyRef.Name)
		}
	}
	if len(o.statefulSet.Spec.VolumeClaimTemplates) != 1 {
		t.Error("no volumeClaimTemplate with persistence")
	}
}
