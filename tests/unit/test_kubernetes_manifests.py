"""
The Kubernetes manifests of deploy/kubernetes/ hold together: each one is
valid against a named Kubernetes release (kubernetes-validate, strict), the
kustomization lists them and renders (kubectl kustomize), netd.toml (the
ConfigMap's) is a config netd accepts, and the Deployment, the Services and
the probes name the ports and paths that config and the control API use.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from netd.config.spec import NetdConfig, loadConfig
from netd.daemon.api.guard import OPEN_PATHS, hostAllowed
from netd.registry import discoverPlugins
from netd.testing.harness import unavailable

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
OPTIONAL = {"servicemonitor.yaml"}
"""
Manifests shipped beside the kustomization but left out of it: their kinds
come from CRDs (the Prometheus Operator's), not from Kubernetes itself.
"""
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
"""
The releases the manifests are validated against: the oldest one the README
names as supported, and the newest kubernetes-validate ships schemas for.
"""
DRAIN_MARGIN = 5
"""
Seconds terminationGracePeriodSeconds keeps beyond lameduck +
shutdown_timeout, for the process to exit before the kubelet's SIGKILL.
"""
RESTRICTED_VOLUMES = {"configMap", "emptyDir", "secret", "projected", "downwardAPI", "csi", "ephemeral"}
"""
The volume types the restricted Pod Security Standard allows (persistent
volume claims aside, which netd has no use for).
"""
IDLE_CONNECTIONS = 10_000
"""
The connections a pod's memory limit is sized for (README.md, "Sizing").
"""


def loadDocuments(path: Path) -> list[dict[str, Any]]:
    """
    The YAML documents of one file, empty ones left out.
    """
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def kustomization() -> dict[str, Any]:
    """
    deploy/kubernetes/kustomization.yaml, parsed.
    """
    document: dict[str, Any] = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text(encoding="utf-8"))
    return document


def manifests() -> dict[str, list[dict[str, Any]]]:
    """
    Every manifest of the kustomization, by file name.
    """
    return {name: loadDocuments(DEPLOY / name) for name in kustomization()["resources"]}


def one(kind: str) -> dict[str, Any]:
    """
    The one object of C{kind} among the kustomization's manifests.
    """
    found = [d for documents in manifests().values() for d in documents if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def services() -> list[dict[str, Any]]:
    """
    The Service objects of the kustomization.
    """
    return [d for documents in manifests().values() for d in documents if d["kind"] == "Service"]


def generatedConfigMap() -> dict[str, Any]:
    """
    The ConfigMap the kustomization's configMapGenerator makes (without the
    hash suffix kustomize adds to its name).
    """
    (generator,) = kustomization()["configMapGenerator"]
    data = {Path(f).name: (DEPLOY / f).read_text(encoding="utf-8") for f in generator["files"]}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}


def container(name: str = "netd") -> dict[str, Any]:
    """
    A container of the Deployment's pod, by name.
    """
    spec = one("Deployment")["spec"]["template"]["spec"]
    (found,) = [c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name]
    return found


def netdConfig(tmp_path: Path) -> tuple[NetdConfig, dict[str, Any]]:
    """
    netd.toml loaded as C{netd check} loads it, with its admin token file
    (made in the pod by the init container) moved to a file of the test.
    """
    text = (DEPLOY / "netd.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    tokenFile = tmp_path / "admin.token"
    tokenFile.write_text("a-test-token\n", encoding="ascii")
    tokenFile.chmod(0o600)
    copy = tmp_path / "netd.toml"
    copy.write_text(text.replace(data["daemon"]["admin_token_file"], str(tokenFile)), encoding="utf-8")
    return loadConfig(str(copy), discoverPlugins()), data


def listenPorts(data: dict[str, Any]) -> set[tuple[int, str]]:
    """
    The (port, protocol) pairs netd.toml's services listen on, in Kubernetes'
    protocol names.
    """
    ports = set()
    for service in data["services"]:
        for address in service["listen"]:
            kind, port = address.split(":")[:2]
            ports.add((int(port), {"tcp": "TCP", "udp": "UDP"}[kind]))
    return ports


def adminPort(data: dict[str, Any]) -> int:
    """
    The port of netd.toml's control API.
    """
    kind, port = data["daemon"]["admin"].split(":")[:2]
    assert kind == "tcp"
    return int(port)


def containerPorts() -> dict[str, tuple[int, str]]:
    """
    The netd container's ports: (port, protocol) by name.
    """
    return {p["name"]: (p["containerPort"], p.get("protocol", "TCP")) for p in container()["ports"]}


def kubernetesValidate() -> Any:
    """
    kubernetes_validate.utils (the test extra installs it).
    """
    try:
        import kubernetes_validate.utils
    except ImportError:
        unavailable("kubernetes-validate is not installed (pip install -e '.[test]')")
    return kubernetes_validate.utils


def test_kustomizationListsEveryManifest() -> None:
    """
    kustomization.yaml lists every manifest of the folder but the optional CRD ones, and each file it names exists.
    """
    listed = set(kustomization()["resources"])
    shipped = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == shipped - OPTIONAL
    assert OPTIONAL <= shipped
    for generator in kustomization()["configMapGenerator"]:
        for name in generator["files"]:
            assert (DEPLOY / name).is_file(), name


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifestsValidate(version: str) -> None:
    """
    Every object of the kustomization, the generated ConfigMap included, is valid against the release's schemas, strictly (no unknown field).
    """
    validator = kubernetesValidate()
    objects = [d for documents in manifests().values() for d in documents] + [generatedConfigMap()]
    for document in objects:
        validator.validate(document, version, strict=True)
    assert {d["kind"] for d in objects} >= {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget"}


def test_serviceMonitorNamesTheAdminEndpoints() -> None:
    """
    The optional ServiceMonitor selects the headless admin Service by its labels, scrapes its port and /metrics, with the token of the Secret the pods use.
    """
    (monitor,) = loadDocuments(DEPLOY / "servicemonitor.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "ServiceMonitor"
    selector = monitor["spec"]["selector"]["matchLabels"]
    (admin,) = [s for s in services() if selector.items() <= s["metadata"]["labels"].items()]
    assert admin["spec"]["clusterIP"] == "None"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in admin["spec"]["ports"]}
    assert endpoint["path"] == "/metrics" and b"/metrics" not in OPEN_PATHS
    secret = endpoint["authorization"]["credentials"]
    volumes = {v["name"]: v for v in one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["admin-secret"]["secret"]["secretName"] == secret["name"]
    assert f"/{secret['key']}" in " ".join(container("admin-token")["command"])


def test_configIsValid(tmp_path: Path) -> None:
    """
    netd.toml, the ConfigMap's config, loads as netd check loads it, with every service enabled.
    """
    config, _ = netdConfig(tmp_path)
    assert [s.name for s in config.services if s.enabled] == ["echo", "dns"]


def test_gracePeriodCoversTheDrain(tmp_path: Path) -> None:
    """
    terminationGracePeriodSeconds exceeds netd.toml's lameduck + shutdown_timeout by the margin, and both are set in the file, not left to defaults.
    """
    config, data = netdConfig(tmp_path)
    assert {"lameduck", "shutdown_timeout"} <= data["daemon"].keys()
    assert config.daemon.lameduck > 0
    grace = one("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= config.daemon.lameduck + config.daemon.shutdown_timeout + DRAIN_MARGIN


def test_containerPortsAreTheListenedOnes() -> None:
    """
    The container declares exactly the ports netd.toml listens on (services and control API), each with its protocol.
    """
    data = tomllib.loads((DEPLOY / "netd.toml").read_text(encoding="utf-8"))
    declared = set(containerPorts().values())
    assert declared == listenPorts(data) | {(adminPort(data), "TCP")}


def test_servicesReachEveryListener() -> None:
    """
    Each Service port targets a named container port of its protocol, and every service listener (DNS: UDP and TCP) is behind a Service.
    """
    ports = containerPorts()
    reached = set()
    selector = one("Deployment")["spec"]["selector"]["matchLabels"]
    for service in services():
        assert service["spec"]["selector"] == selector
        for port in service["spec"]["ports"]:
            target = ports[port["targetPort"]]
            assert target[1] == port["protocol"], port
            reached.add(target)
    data = tomllib.loads((DEPLOY / "netd.toml").read_text(encoding="utf-8"))
    assert listenPorts(data) <= reached
    dns = {p["protocol"] for s in services() if s["metadata"]["name"] == "netd-dns" for p in s["spec"]["ports"]}
    assert dns == {"UDP", "TCP"}


def test_probesUseTheOpenControlAPIPaths() -> None:
    """
    Readiness asks /ready and liveness /health, on the control API's port, with a Host netd answers: the probes need no token.
    """
    data = tomllib.loads((DEPLOY / "netd.toml").read_text(encoding="utf-8"))
    netd = container()
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
        get = netd[probe]["httpGet"]
        assert get["path"] == path and path.encode() in OPEN_PATHS
        assert containerPorts()[get["port"]] == (adminPort(data), "TCP")
        headers = {h["name"].lower(): h["value"] for h in get["httpHeaders"]}
        assert hostAllowed(headers["host"].encode(), frozenset(data["daemon"].get("admin_hosts", ())))


def test_restrictedSecurityContext() -> None:
    """
    Pods pass the restricted Pod Security Standard as the image's non-root user: no privilege escalation, a read-only root, every capability dropped and none added (every port is 1024 or above), no host namespace or port, only the allowed volume types.
    """
    pod = one("Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for each in pod["containers"] + pod["initContainers"]:
        context = each["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
    assert min(port for port, _ in containerPorts().values()) >= 1024
    assert not {"hostNetwork", "hostPID", "hostIPC"} & pod.keys()
    assert all("hostPort" not in port for each in pod["containers"] for port in each["ports"])
    assert {kind for volume in pod["volumes"] for kind in volume.keys() - {"name"}} <= RESTRICTED_VOLUMES


def test_writablePathsAreVolumes(tmp_path: Path) -> None:
    """
    With a read-only root, what netd writes (state_dir) and the token file the init container writes are on emptyDir volumes, and netd reads its config from the ConfigMap's mount.
    """
    config, data = netdConfig(tmp_path)
    pod = one("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}

    def volumeAt(each: dict[str, Any], path: str) -> dict[str, Any]:
        (mount,) = [m for m in each["volumeMounts"] if Path(path).is_relative_to(m["mountPath"])]
        return {**volumes[mount["name"]], "readOnly": mount.get("readOnly", False)}

    assert "emptyDir" in volumeAt(container(), data["daemon"]["state_dir"])
    assert volumeAt(container(), data["daemon"]["state_dir"])["readOnly"] is False
    token = data["daemon"]["admin_token_file"]
    assert "emptyDir" in volumeAt(container(), token)
    assert volumeAt(container("admin-token"), token)["readOnly"] is False
    assert token in " ".join(container("admin-token")["command"])
    assert container()["command"] == ["netd"] and container()["args"][0] == "run"
    configPath = container()["args"][container()["args"].index("-c") + 1]
    assert volumeAt(container(), configPath)["configMap"]["name"] == generatedConfigMap()["metadata"]["name"]
    assert Path(configPath).name in generatedConfigMap()["data"]
    assert config.daemon.state_dir == data["daemon"]["state_dir"]


def benchMemory() -> tuple[float, float]:
    """
    netd's RSS at start (MiB) and per idle connection (KiB) in the newest
    echo memory table of bench/RESULTS.md (newest first).
    """
    results = (ROOT / "bench" / "RESULTS.md").read_text(encoding="utf-8")
    table = results.split("| memory, 10,000 idle connections |", 1)[1]
    row = re.search(r"^\| netd \| ([\d.]+) \| [\d.]+ \| ([\d.]+) \|", table, re.MULTILINE)
    assert row is not None
    return float(row.group(1)), float(row.group(2))


def test_memoryLimitFitsTheMeasuredFigures(tmp_path: Path) -> None:
    """
    The memory limit holds the measured RSS of 10,000 idle echo connections plus a full DNS cache, twice over; the request holds the start and the cache.
    """
    config, _ = netdConfig(tmp_path)
    atStart, perConnection = benchMemory()
    cacheBytes = max(getattr(s.options, "cache_bytes", 0) for s in config.services)
    assert cacheBytes > 0
    needed = atStart * 2**20 + IDLE_CONNECTIONS * perConnection * 1024 + cacheBytes
    resources = container()["resources"]
    assert parseQuantity(resources["limits"]["memory"]) >= 2 * needed
    assert parseQuantity(resources["requests"]["memory"]) >= atStart * 2**20 + cacheBytes


def parseQuantity(text: str) -> int:
    """
    Bytes of a Kubernetes memory quantity in binary units (C{128Mi}).
    """
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", text)
    assert match is not None, text
    return int(match.group(1)) * {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}[match.group(2)]


def test_kustomizeRenders() -> None:
    """
    kubectl kustomize renders the folder: the objects of the manifests plus the ConfigMap, its hashed name written into the Deployment, each valid.
    """
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        unavailable("kubectl is not installed (./test.sh installs it)")
    result = subprocess.run([kubectl, "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    (configMap,) = [d for d in rendered if d["kind"] == "ConfigMap"]
    assert configMap["metadata"]["name"].startswith("netd-config-")
    assert configMap["data"] == generatedConfigMap()["data"]
    (deployment,) = [d for d in rendered if d["kind"] == "Deployment"]
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert configMap["metadata"]["name"] in {v.get("configMap", {}).get("name") for v in volumes}
    expected = sorted((d["kind"], d["metadata"]["name"]) for documents in manifests().values() for d in documents)
    assert sorted((d["kind"], d["metadata"]["name"]) for d in rendered if d["kind"] != "ConfigMap") == expected
    validator = kubernetesValidate()
    for document in rendered:
        validator.validate(document, KUBERNETES_VERSIONS[0], strict=True)


def test_readmeLinksResolve() -> None:
    """
    Every relative link of deploy/kubernetes/README.md names a file of the checkout and, with a #fragment, one of its headings.
    """
    readme = DEPLOY / "README.md"
    broken = []
    for target in re.findall(r"\]\(([^)\s]*)\)", readme.read_text(encoding="utf-8")):
        if "://" in target:
            continue
        path, _, fragment = target.partition("#")
        linked = (readme.parent / path).resolve() if path else readme
        headings = re.findall(r"^#+ (.+)$", linked.read_text(encoding="utf-8"), re.MULTILINE) if linked.exists() else []
        anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
        if not linked.exists() or (fragment and fragment not in anchors):
            broken.append(target)
    assert broken == []
