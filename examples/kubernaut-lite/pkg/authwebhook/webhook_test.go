package authwebhook

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestAStatusUpdateIsStampedWithTheUser(t *testing.T) {
	resp := Mutate(&Request{Operation: "UPDATE", SubResource: "status",
		UserInfo: UserInfo{Username: "alice"}, Object: json.RawMessage(`{"status":{"phase":"Sent"}}`)})
	var patch []map[string]any
	json.Unmarshal(resp.Patch, &patch)
	if !resp.Allowed || resp.PatchType != "JSONPatch" || len(patch) != 1 || patch[0]["path"] != "/status/lastModifiedBy" || patch[0]["value"] != "alice" {
		t.Fatalf("%+v %s", resp, resp.Patch)
	}
	if len(Mutate(&Request{Operation: "UPDATE", Object: json.RawMessage(`{}`)}).Patch) != 0 {
		t.Fatal("a spec update was patched")
	}
	resp = Mutate(&Request{Operation: "UPDATE", SubResource: "status", Object: json.RawMessage(`{}`)})
	if !strings.Contains(string(resp.Patch), `"path":"/status"`) {
		t.Fatalf("no status to add to: %s", resp.Patch)
	}
}

func TestADeleteNeedsApprovalExceptForKubernetesControllers(t *testing.T) {
	req := &Request{Operation: "DELETE", Resource: GroupResource{Resource: "notificationrequests"},
		Namespace: "ns", Name: "n1", UserInfo: UserInfo{Username: "bob"}, OldObject: json.RawMessage(`{"metadata":{}}`)}
	resp := Validate(req)
	if resp.Allowed || !strings.Contains(resp.Result.Message, ApprovalAnnotation) {
		t.Fatalf("%+v", resp)
	}
	req.OldObject = json.RawMessage(`{"metadata":{"annotations":{"kubernaut.ai/deletion-approved":"true"}}}`)
	if !Validate(req).Allowed {
		t.Fatal("an approved delete was refused")
	}
	req.OldObject = json.RawMessage(`{}`)
	req.UserInfo.Username = "system:serviceaccount:kube-system:namespace-controller"
	if !Validate(req).Allowed {
		t.Fatal("namespace deletion was refused")
	}
}
