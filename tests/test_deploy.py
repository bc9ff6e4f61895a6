"""The operations files shipped in deploy/: the alert rules (promtool's check and unit tests, and
a real Prometheus seeing the queue-age alert fire against a running ingress and worker), the
Grafana dashboard (every metric it names is one a live process exposes), the Kubernetes
manifests (core kinds by kubernetes-validate, KEDA's ScaledObject by a schema of ours)."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import tomllib
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shared import migrate
from shared.config import settings_from_mapping
from tests.helpers import SOURCES, make_settings, signed
from tests.processes import (
    Procs,
    env_for,
    free_port,
    hookline,
    http_ok,
    processes,
    stop_groups,
    wait_until,
)
from tests.services import missing
from workers import metrics as worker_metrics

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana" / "hookline.json"
KUBERNETES = DEPLOY / "kubernetes"
KEDA_SCHEMA = Path(__file__).with_name("schemas") / "keda-scaledobject.json"
#: the Kubernetes version the manifests are validated against (kubernetes-validate's schemas)
KUBERNETES_VERSION = "1.30.0"
METRIC = re.compile(r"\bhookline_[a-z0-9_]+\b")


def tool(name: str) -> str:
    """The path of one of Debian's `prometheus` package's programs; skip (fail under CI)
    when it is not installed."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} not found: install Debian's prometheus package (.ci/run does)")
    assert path is not None
    return path


def rules(path: Path = ALERTS) -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]


# -- the alert rules -----------------------------------------------------------------------


def test_promtool_checks_the_alert_rules() -> None:
    result = subprocess.run(
        [tool("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    result = subprocess.run(
        [tool("promtool"), "test", "rules", str(ALERTS_TEST)],
        capture_output=True,
        text=True,
        cwd=ALERTS_TEST.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    cases = [c for t in tests for c in t["alert_rule_test"]]
    for rule in rules():
        name = rule["alert"]
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"{name} is never shown firing"
        assert any(not c["exp_alerts"] for c in mine), f"{name} is never shown quiet"


def test_the_alerts_the_issue_asks_for_are_there() -> None:
    exprs = {r["alert"]: r["expr"] for r in rules()}
    assert "hookline_queue_oldest_age_seconds" in exprs["HooklineQueueStalled"]
    assert "hookline_dead_letters" in exprs["HooklineDeadLettersGrowing"]
    assert "hookline_ingest_rejected_total" in exprs["HooklineSourceRejectionsSpiking"]
    assert "hookline_workers_alive" in exprs["HooklineNoWorkerAlive"]
    assert "0.85" in exprs["HooklineRedisMemoryHigh"]
    assert "unavailable" in exprs["HooklineIngressUnavailable"]


def low_threshold_rules(age_seconds: int) -> dict[str, Any]:
    """alerts.yml with the queue-age threshold lowered to ``age_seconds`` and no waiting
    (``for``) on the queue-age and no-worker alerts: what the real-Prometheus test loads."""
    doc = yaml.safe_load(ALERTS.read_text())
    for rule in (r for g in doc["groups"] for r in g["rules"]):
        if rule["alert"] == "HooklineQueueStalled":
            expr, n = re.subn(r">\s*300\s*$", f"> {age_seconds}", rule["expr"].strip())
            assert n == 1, "the queue-age threshold is no longer `> 300` at the end"
            rule["expr"] = expr
        if rule["alert"] in ("HooklineQueueStalled", "HooklineNoWorkerAlive"):
            rule["for"] = "0s"
    return dict(doc)


# -- the Kubernetes manifests --------------------------------------------------------------


def manifests() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in manifests() if d["kind"] == kind}


def keda_schema() -> dict[str, Any]:
    return dict(json.loads(KEDA_SCHEMA.read_text()))


def test_every_manifest_is_valid() -> None:
    seen = set()
    for name, doc in manifests():
        seen.add(doc["kind"])
        if doc["kind"] == "ScaledObject":
            jsonschema.validate(doc, keda_schema())
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "hookline", name
    assert {"Deployment", "Service", "ConfigMap", "ScaledObject", "Job"} <= seen


def test_the_validators_refuse_a_mistake() -> None:
    # a misspelt field is caught by each validator (so a pass means something)
    deployment = copy.deepcopy(by_kind("Deployment")["hookline-worker"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    scaled = copy.deepcopy(by_kind("ScaledObject")["hookline-worker"])
    trigger = scaled["spec"]["triggers"][0]["metadata"]
    trigger["treshold"] = trigger.pop("threshold")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, keda_schema())
    scaled["spec"]["triggers"][0]["metadata"] = {**trigger, "threshold": 30}  # not a string
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, keda_schema())


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    [only] = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


def test_ingress_and_workers_are_probed_on_readyz_and_healthz() -> None:
    deployments = by_kind("Deployment")
    for name in ("hookline-ingress", "hookline-worker"):
        c = container(deployments[name])
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            assert c[probe]["httpGet"]["path"] == path, (name, probe)
            assert c[probe]["httpGet"]["port"] in ports, (name, probe)
        # the port probed is the one the command listens on
        [port] = ports.values()
        flag = "--port" if name == "hookline-ingress" else "--metrics-port"
        assert c["command"][c["command"].index(flag) + 1] == str(port)
    assert container(deployments["hookline-console"])["command"][:2] == ["hookline", "console"]


def test_services_select_deployments_and_the_autoscaler_targets_the_workers() -> None:
    deployments = by_kind("Deployment")
    for name, service in by_kind("Service").items():
        selector = service["spec"]["selector"]
        matched = [
            d
            for d in deployments.values()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, name
        ports = {p["name"] for p in container(matched[0])["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports, name
    scaled = by_kind("ScaledObject")["hookline-worker"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "hookline-worker"
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert "hookline_queue_oldest_age_seconds" in trigger["metadata"]["query"]


def test_the_configmap_is_a_configuration_hookline_loads() -> None:
    text = by_kind("ConfigMap")["hookline-config"]["data"]["hookline.toml"]
    raw = tomllib.loads(text)
    names = set(re.findall(r"\$\{([A-Z_]+)\}", text))
    settings = settings_from_mapping(raw, environ={n: "x" * 32 for n in names})
    assert settings.sources
    for deployment in by_kind("Deployment").values():
        c = container(deployment)
        mounted = {m["mountPath"] for m in c["volumeMounts"]}
        config = next(e["value"] for e in c["env"] if e["name"] == "HOOKLINE_CONFIG")
        assert str(Path(config).parent) in mounted


# -- live processes: the names the dashboard and the rules use, and a real Prometheus ----------


def write_config(folder: Path, redis_url: str) -> tuple[Path, str]:
    database_url = f"sqlite:///{folder / 'hookline.db'}"
    migrate.upgrade(database_url)
    config = folder / "hookline.toml"
    config.write_text(
        f'redis_url = "{redis_url}"\ndatabase_url = "{database_url}"\n'
        f'[sources.moncash]\nscheme = "moncash"\n'
        f"secrets = {json.dumps(SOURCES['moncash']['secrets'])}\n"
    )
    return config, database_url


def start_ingress_and_worker(procs: Procs, folder: Path, redis_url: str) -> tuple[int, int, Any]:
    """An ingress and a worker (with its metrics port) on 127.0.0.1, both ready."""
    config, _ = write_config(folder, redis_url)
    env = env_for(HOOKLINE_CONFIG=str(config))
    ingress_port, metrics_port = free_port(), free_port()
    procs.start(
        hookline("serve", "--host", "127.0.0.1", "--port", str(ingress_port)),
        env,
        folder / "ingress.log",
    )
    worker = procs.start(
        hookline("worker", "--metrics-port", str(metrics_port)), env, folder / "worker.log"
    )
    wait_until(lambda: http_ok(f"http://127.0.0.1:{ingress_port}/readyz"), 30, "the ingress")
    wait_until(lambda: http_ok(f"http://127.0.0.1:{metrics_port}/readyz"), 30, "the worker")
    return ingress_port, metrics_port, worker


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - 127.0.0.1 only
        return str(resp.read().decode())


def exposed(text: str) -> set[str]:
    """The sample names a /metrics answer offers: every family's, with a histogram's
    _bucket/_sum/_count and a counter's _total, whether or not it has samples yet."""
    names = set()
    for kind_line in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        name, kind = kind_line
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        if kind == "counter":
            names.add(f"{name}_total")
    return names


def dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p["targets"]]


def used_names() -> dict[str, set[str]]:
    """Every metric name each shipped file's expressions use."""
    keda = by_kind("ScaledObject")["hookline-worker"]["spec"]["triggers"][0]["metadata"]["query"]
    return {
        "deploy/grafana/hookline.json": {m for e in dashboard_exprs() for m in METRIC.findall(e)},
        "deploy/prometheus/alerts.yml": {m for r in rules() for m in METRIC.findall(r["expr"])},
        "deploy/kubernetes/keda-scaledobject.yaml": set(METRIC.findall(keda)),
    }


def test_the_dashboard_is_complete_and_each_panel_queries_hookline() -> None:
    doc = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for panel in doc["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert METRIC.search(target["expr"]), target["expr"]
            assert target["datasource"]["uid"] == "${datasource}"
    names = {m for e in dashboard_exprs() for m in METRIC.findall(e)}
    for wanted in (
        "hookline_queue_depth",
        "hookline_queue_oldest_age_seconds",
        "hookline_event_lag_seconds_bucket",
        "hookline_dead_letters",
        "hookline_redis_memory_used_bytes",
    ):
        assert wanted in names


@pytest.mark.slow
def test_dashboard_rules_and_autoscaler_name_only_metrics_live_processes_expose(
    tmp_path: Path, redis_url: str
) -> None:
    with processes() as procs:
        ingress, worker, _ = start_ingress_and_worker(procs, tmp_path, redis_url)
        live = exposed(get(f"http://127.0.0.1:{ingress}/metrics"))
        live |= exposed(get(f"http://127.0.0.1:{worker}/metrics"))
        # the worker's probes answer on its metrics port
        assert json.loads(get(f"http://127.0.0.1:{worker}/healthz")) == {"status": "ok"}
    assert "hookline_dead_letters" in live and "hookline_event_lag_seconds_bucket" in live
    for where, names in used_names().items():
        assert names, where
        assert names <= live, f"{where} names metrics no process exposes: {names - live}"


def test_worker_readyz_is_503_while_redis_does_not_answer() -> None:
    from prometheus_client import CollectorRegistry

    def call(path: str, ready: bool) -> tuple[str, bytes]:
        got: list[str] = []
        app = worker_metrics.app(CollectorRegistry(), lambda: ready)
        body = b"".join(app({"PATH_INFO": path}, lambda status, _headers: got.append(status)))
        return got[0], body

    assert call("/readyz", True)[0] == "200 OK"
    assert call("/readyz", False) == (
        "503 Service Unavailable",
        b'{"status": "unavailable", "redis": false}',
    )
    assert call("/healthz", False)[0] == "200 OK"


def prometheus_api(port: int, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    answer = json.loads(get(f"http://127.0.0.1:{port}/api/v1/{path}{query}"))
    assert answer["status"] == "success", answer
    return answer["data"]


def firing(port: int) -> dict[str, dict[str, str]]:
    """The alerts firing now, by name (their labels)."""
    return {
        a["labels"]["alertname"]: a["labels"]
        for a in prometheus_api(port, "alerts")["alerts"]
        if a["state"] == "firing"
    }


@pytest.mark.slow
def test_a_real_prometheus_fires_the_queue_age_alert_when_the_workers_stop(
    tmp_path: Path, redis_url: str
) -> None:
    binary = tool("prometheus")
    # Given a running ingress and worker, scraped every second by a real Prometheus that
    # evaluates the shipped rules (queue-age threshold 3 s instead of 300 s) every second
    rules_file = tmp_path / "alerts.yml"
    rules_file.write_text(yaml.safe_dump(low_threshold_rules(3)))
    with processes() as procs:
        ingress, worker_port, worker = start_ingress_and_worker(procs, tmp_path, redis_url)
        port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules_file)],
            "scrape_configs": [
                {"job_name": "ingress", "static_configs": [{"targets": [f"127.0.0.1:{ingress}"]}]},
                {
                    "job_name": "worker",
                    "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}],
                },
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        procs.start(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            env_for(),
            tmp_path / "prometheus.log",
        )
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/-/ready"), 30, "prometheus")

        def targets_up() -> bool:
            active = prometheus_api(port, "targets")["activeTargets"]
            return len(active) == 2 and all(t["health"] == "up" for t in active)

        wait_until(targets_up, 30, "both targets scraped", interval=0.5)
        settings = make_settings(redis_url, sources={"moncash": SOURCES["moncash"]})

        def post(n: int) -> None:
            body, headers, _ = signed(settings, "moncash", n=n)
            req = urllib.request.Request(
                f"http://127.0.0.1:{ingress}/webhooks/moncash",
                data=body,
                headers=headers,
                method="POST",
            )
            with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
                assert resp.status == 202

        def value(query: str) -> float | None:
            result = prometheus_api(port, "query", query=query)["result"]
            return float(result[0]["value"][1]) if result else None

        # While the worker runs, events are applied and neither alert fires
        post(1)
        wait_until(
            lambda: value('sum(hookline_worker_events_total{outcome="processed"})') == 1,
            30,
            "the event processed, as Prometheus sees it",
            interval=0.5,
        )
        wait_until(lambda: value("max(hookline_workers_alive)") == 1, 30, "a worker alive")
        assert not {"HooklineQueueStalled", "HooklineNoWorkerAlive"} & firing(port).keys()
        # and every dashboard expression is one Prometheus runs
        for expr in dashboard_exprs():
            prometheus_api(port, "query", query=expr)

        # When the workers stop and events keep arriving
        procs.procs.remove(worker)
        stop_groups([worker])
        for n in range(2, 5):
            post(n)

        # Then the queue-age alert fires for the queue (and the no-worker alert with it)
        def stalled() -> bool:
            now = firing(port)
            return (
                now.get("HooklineQueueStalled", {}).get("queue") == "hookline"
                and "HooklineNoWorkerAlive" in now
            )

        waited = wait_until(stalled, 45, "the queue-age alert firing", interval=0.5)
        depth = value('max(hookline_queue_depth{queue="hookline"})')
        assert depth == 3
        print(f"queue-age alert fired {waited:.1f} s after the worker stopped")
