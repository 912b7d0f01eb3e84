"""deploy/: the Kubernetes manifests against the Kubernetes API schemas (kubernetes-validate,
strict), the Serve config (and the one inside the RayService) against Ray's own schema, and every
`phi4mm serve` command line and Serve `args` in them against phi4mm's own parser. No cluster is
started here: these say the files are well-formed and agree with the code, not that they run."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from phi4mm.server.settings import ServerSettings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
K8S_VERSION = "1.31"


def _docs(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]


def _validate(doc: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _pod(template: dict) -> dict:
    """A pod template as a Pod, so the core schema checks it wherever it sits."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": template.get("metadata") or {"name": "t"},
            **({"spec": template["spec"]})}


@pytest.mark.parametrize("name", ["kubernetes/pvc.yaml", "kubernetes/convert-job.yaml",
                                  "kubernetes/deployment.yaml", "kubernetes/service.yaml"])
def test_core_manifests_are_valid_kubernetes(name: str):
    for doc in _docs(name):
        _validate(doc)


def test_the_validator_is_strict():
    """Negative controls: an unknown field and a wrong type are refused."""
    import kubernetes_validate

    deployment = _docs("kubernetes/deployment.yaml")[0]
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    for bad in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            _validate(bad)


def test_the_deployment_probes_health_and_outlasts_the_drain():
    from phi4mm.cli import build_parser

    deployment = _docs("kubernetes/deployment.yaml")[0]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    assert pod["terminationGracePeriodSeconds"] > ServerSettings().shutdown_timeout_s
    assert container["command"] == ["phi4mm"]
    args = build_parser().parse_args(container["args"])
    assert (args.command, args.host, args.port, args.replicas) == ("serve", "0.0.0.0", 8000, None)
    assert args.model == "/models/phi4mm-q4_k_m"
    job = _docs("kubernetes/convert-job.yaml")[0]
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][3] == args.model
    service = _docs("kubernetes/service.yaml")[0]
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]


def _check_serve_config(config: dict) -> None:
    pytest.importorskip("ray")
    from ray.serve.schema import ServeDeploySchema

    from phi4mm.cluster.app import as_flags, parser

    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    assert app["import_path"] == "phi4mm.cluster.app:build"
    args = parser().parse_args(as_flags(app["args"]))
    assert args.replicas in (2, "auto") and args.model == "/models/phi4mm-q4_k_m"


def test_the_serve_config_is_valid_for_ray_serve():
    from ray.serve.schema import ServeDeploySchema

    _check_serve_config(_docs("serve-config.yaml")[0])
    for field, value in (("import_path", None), ("proxy_location", "Nowhere")):  # negative controls
        broken = _docs("serve-config.yaml")[0]
        where = broken["applications"][0] if field == "import_path" else broken
        where.pop(field) if value is None else where.__setitem__(field, value)
        with pytest.raises(ValueError, match=field):
            ServeDeploySchema.model_validate(broken)


def test_the_rayservice_holds_a_valid_serve_config_and_valid_pods():
    service = _docs("kubernetes/rayservice.yaml")[0]
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    _check_serve_config(yaml.safe_load(service["spec"]["serveConfigV2"]))
    cluster = service["spec"]["rayClusterConfig"]
    import ray

    assert cluster["rayVersion"] == ray.__version__
    _validate(_pod(cluster["headGroupSpec"]["template"]))
    (workers,) = cluster["workerGroupSpecs"]
    _validate(_pod(workers["template"]))
    assert workers["minReplicas"] <= workers["replicas"] <= workers["maxReplicas"]
    assert workers["template"]["spec"]["terminationGracePeriodSeconds"] > ServerSettings().shutdown_timeout_s
    threads = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]["threads"]
    cpu = workers["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
    assert int(cpu) >= threads  # a worker pod has room for a replica's Ray CPUs
