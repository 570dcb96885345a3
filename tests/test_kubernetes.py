"""deploy/kubernetes/, checked without a cluster: each overlay renders (`kubectl kustomize`),
Kubernetes' own kinds validate against Kubernetes' JSON schemas (tests/data/kubernetes-schemas/),
KEDA's and the operators' resources (no schema of theirs here) are checked field by field,
the containers run compose's commands, and the probe paths answer on a service started
locally with the environment its Deployment gives it."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource

from tests.prometheus import free_port
from tests.helpers import delete_logins, get

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("single-node", "operators")
# Kubernetes' own schemas (from the kubernetes-validate wheel, Apache-2.0; see
# tests/data/kubernetes-schemas/README.md), for the version the manifests target.
SCHEMAS = ROOT / "tests" / "data" / "kubernetes-schemas" / "v1.32.0"
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
CONFIG = tomllib.loads((ROOT / "config.toml").read_text())
APPS = ("actor", "ingest", "trainer", "evaluator", "web")
# The Secrets only the admins' Jobs (provision, minio-logins) may read.
ADMIN_SECRETS = {"cartridge-broker", "cartridge-postgres", "rabbitmq-default-user", "postgres-superuser", "postgres-app",
                 "cartridge-s3", "minio-configuration"}
# The S3 policies (deploy/minio/<service>.json) and their copies in the Job minio-logins' component.
POLICIES = ROOT / "deploy" / "minio"
MINIO_LOGINS = KUBERNETES / "components" / "minio-logins"
# The kinds without a schema here, each checked by a test below.
CUSTOM = {("keda.sh/v1alpha1", "ScaledObject"), ("keda.sh/v1alpha1", "TriggerAuthentication"),
          ("rabbitmq.com/v1beta1", "RabbitmqCluster"), ("postgresql.cnpg.io/v1", "Cluster"),
          ("minio.min.io/v2", "Tenant")}


@functools.cache
def rendered() -> dict[str, tuple[dict, ...]]:
    """Every overlay as `kubectl kustomize` renders it (all at once: kubectl is slow to start
    on a busy machine)."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is missing (.ci/run installs it: apt-get install kubectl)"
    runs = {overlay: subprocess.Popen([kubectl, "kustomize", str(KUBERNETES / "overlays" / overlay)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for overlay in OVERLAYS}
    out = {}
    for overlay, run in runs.items():
        stdout, stderr = run.communicate(timeout=120)
        assert run.returncode == 0, f"{overlay}: {stderr}"
        out[overlay] = tuple(yaml.safe_load_all(stdout))
    return out


def render(overlay: str) -> tuple[dict, ...]:
    return rendered()[overlay]


def objects(overlay: str, kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in render(overlay) if o["kind"] == kind}


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def env_of(deployment: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container(deployment).get("env", [])}


def config_map(overlay: str, prefix: str) -> dict:
    (found,) = [m for name, m in objects(overlay, "ConfigMap").items() if name.startswith(prefix + "-")]
    return found


def endpoints(overlay: str) -> dict[str, str]:
    return config_map(overlay, "cartridge-endpoints")["data"]


def secret_refs(deployment: dict) -> dict[str, tuple[str, str]]:
    """Env var -> (Secret name, key) for every variable read from a Secret."""
    return {name: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for name, e in env_of(deployment).items() if "secretKeyRef" in e.get("valueFrom", {})}


def test_the_base_config_is_the_repository_config():
    copy = KUBERNETES / "base" / "config.toml"
    assert copy.read_text() == (ROOT / "config.toml").read_text(), \
        "deploy/kubernetes/base/config.toml differs: cp config.toml deploy/kubernetes/base/config.toml"


def test_the_minio_policies_are_the_repositorys():
    """The Job minio-logins' policies are copies of deploy/minio/*.json (kustomize reads no
    file outside its folder), each in the ConfigMap minio-policies of every overlay."""
    policies = {p.name: p.read_text() for p in POLICIES.glob("*.json")}
    copies = {p.name: p.read_text() for p in (MINIO_LOGINS / "policies").glob("*.json")}
    assert policies and copies == policies, \
        "deploy/kubernetes/components/minio-logins/policies/ differs: cp deploy/minio/*.json into it"
    for overlay in OVERLAYS:
        assert config_map(overlay, "minio-policies")["data"] == policies, overlay


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_service(overlay):
    deployments = objects(overlay, "Deployment")
    assert set(deployments) == set(APPS)
    servers = {"single-node": {("StatefulSet", n) for n in ("postgres", "rabbitmq", "minio")},
               "operators": {("RabbitmqCluster", "rabbitmq"), ("Cluster", "postgres"), ("Tenant", "minio")}}[overlay]
    assert servers <= {(o["kind"], o["metadata"]["name"]) for o in render(overlay)}
    # The config the services read is the repository's config.toml.
    assert config_map(overlay, "cartridge-config")["data"]["config.toml"] == (ROOT / "config.toml").read_text()


@functools.cache
def schema_registry() -> Registry:
    return Resource.from_contents(json.loads((SCHEMAS / "_definitions.json").read_text())) @ Registry()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_objects_match_kubernetes_schemas(overlay):
    checked = set()
    for obj in render(overlay):
        if (obj["apiVersion"], obj["kind"]) in CUSTOM:
            continue
        group, _, version = obj["apiVersion"].rpartition("/")
        path = SCHEMAS / f"{obj['kind'].lower()}-{group.split('.')[0] + '-' if group else ''}{version}.json"
        assert path.exists(), f"no schema for {obj['apiVersion']} {obj['kind']}: add it to scripts/kubernetes_schemas.py"
        validator = jsonschema.Draft202012Validator(json.loads(path.read_text()), registry=schema_registry())
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
        assert not errors, (obj["kind"], obj["metadata"]["name"], errors)
        checked.add((obj["kind"], obj["metadata"]["name"]))
    assert len(checked) >= 8
    assert {("Job", "provision"), ("Job", "minio-logins")} <= checked


def test_the_schemas_catch_a_mistake():
    """The strict schemas reject an unknown field and a wrong type: validation is not a no-op."""
    deployment = json.loads(json.dumps(objects("single-node", "Deployment")["trainer"]))
    validator = jsonschema.Draft202012Validator(
        json.loads((SCHEMAS / "deployment-apps-v1.json").read_text()), registry=schema_registry())
    assert validator.is_valid(deployment)
    container(deployment)["livenesProbe"] = container(deployment).pop("livenessProbe")
    assert not validator.is_valid(deployment)
    deployment = json.loads(json.dumps(objects("single-node", "Deployment")["trainer"]))
    deployment["spec"]["replicas"] = "one"
    assert not validator.is_valid(deployment)


def test_every_app_service_of_compose_is_deployed():
    # Not the tools run by hand (a compose profile); the one-shot provision is a Job here.
    apps = {name for name, spec in COMPOSE.items()
            if spec.get("image") == COMPOSE["actor"]["image"] and not spec.get("profiles")}
    assert apps and apps - {"provision"} <= set(APPS)
    assert "provision" in apps and "provision" in objects("single-node", "Job")


@pytest.mark.parametrize("service", APPS)
def test_containers_run_compose_commands(service):
    if service not in COMPOSE:
        pytest.skip(f"compose.yaml has no {service} service on this branch")
    for overlay in OVERLAYS:
        assert container(objects(overlay, "Deployment")[service])["command"] == COMPOSE[service]["command"], overlay


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployments_scale_probe_and_bound_their_resources(overlay):
    deployments = objects(overlay, "Deployment")
    assert deployments["actor"]["spec"]["replicas"] >= 1  # the scale knob
    assert deployments["trainer"]["spec"]["replicas"] == 1
    assert deployments["trainer"]["spec"]["strategy"]["type"] == "Recreate"
    assert "replicas" not in deployments["ingest"]["spec"]  # KEDA owns it
    workloads = [*deployments.values(), *objects(overlay, "StatefulSet").values()]
    for workload in workloads:
        for c in workload["spec"]["template"]["spec"]["containers"]:
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= c["resources"][bound].keys(), (workload["metadata"]["name"], bound)
            assert c.get("livenessProbe") and c.get("readinessProbe"), workload["metadata"]["name"]
    for name, deployment in deployments.items():
        c, env = container(deployment), env_of(deployment)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        if name != "web":
            assert env["CARTRIDGE_METRICS_HOST"]["value"] == "0.0.0.0"  # kubelet probes the pod's IP
            assert ports["metrics"] == int(env["CARTRIDGE_METRICS_PORT"]["value"])
            for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                assert c[probe]["httpGet"] == {"path": path, "port": "metrics"}, (name, probe)
        else:  # the page answers for a turning loop; the metrics endpoint's /readyz for its servers
            assert ports["http"] == int(env["CARTRIDGE_WEB_PORT"]["value"])
            assert env["CARTRIDGE_WEB_HOST"]["value"] == "0.0.0.0"
            assert ports["metrics"] == int(env["CARTRIDGE_METRICS_PORT"]["value"])
            assert env["CARTRIDGE_METRICS_HOST"]["value"] == "0.0.0.0"
            for probe, path, port in (("startupProbe", "/", "http"), ("livenessProbe", "/", "http"),
                                      ("readinessProbe", "/readyz", "metrics")):
                assert c[probe]["httpGet"] == {"path": path, "port": port}, (name, probe)
        # The config file: the ConfigMap mounted where CARTRIDGE_CONFIG points.
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == "config"]
        assert env["CARTRIDGE_CONFIG"]["value"] == mount["mountPath"] + "/config.toml"
        (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"]
        assert volume["configMap"]["name"] == config_map(overlay, "cartridge-config")["metadata"]["name"]
        # Kubernetes expands $(VAR) only from variables defined above it.
        defined = set()
        for e in c["env"]:
            for used in re.findall(r"\$\((\w+)\)", e.get("value", "")):
                assert used in defined, (name, e["name"], used)
            defined.add(e["name"])


def test_pods_run_as_the_images_user():
    uid = re.search(r"useradd .*--uid (\d+)", (ROOT / "Dockerfile").read_text())[1]
    for overlay in OVERLAYS:
        for workload in [*objects(overlay, "Deployment").values(), *objects(overlay, "Job").values()]:
            pod, c = workload["spec"]["template"]["spec"], container(workload)
            assert pod["securityContext"]["runAsNonRoot"] is True, workload["metadata"]["name"]
            if c["image"].split(":")[0] == "cartridge":
                assert pod["securityContext"]["runAsUser"] == int(uid)
            else:  # minio/mc declares no user: a numeric one, not root
                assert pod["securityContext"]["runAsUser"] > 0, workload["metadata"]["name"]
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_credentials_come_only_from_secrets(overlay):
    assert not [o for o in render(overlay) if o["kind"] == "Secret"]  # none committed, none generated
    for tree in KUBERNETES.rglob("*.yaml"):
        assert not re.search(r"^kind:\s*Secret\b", tree.read_text(), re.M), tree
    secret_like = re.compile(r"USER|PASSWORD|PASS$|ACCESS_KEY|SECRET_KEY")
    workloads = [*objects(overlay, "Deployment").values(), *objects(overlay, "StatefulSet").values(),
                 *objects(overlay, "Job").values()]
    for workload in workloads:
        component = workload["metadata"].get("labels", {}).get("app.kubernetes.io/component")
        for c in workload["spec"]["template"]["spec"]["containers"]:
            for e in c.get("env", []):
                if e["name"] == "CARTRIDGE_STORAGE_S3_ACCESS_KEY" and "value" in e:  # a user name, as LOGIN
                    assert e["value"] == f"cartridge_{component}", (workload["metadata"]["name"], e["value"])
                elif secret_like.search(e["name"]):
                    assert "secretKeyRef" in e.get("valueFrom", {}), (workload["metadata"]["name"], e["name"])
                for value in re.findall(r"//([^@/]*)@", e.get("value", "")):  # a login in a URL
                    assert re.fullmatch(r"\$\(\w+\):\$\(\w+\)", value), (e["name"], value)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_service_logs_in_as_itself_and_only_provision_as_the_admin(overlay):
    users = tomllib.loads((ROOT / "deploy" / "rabbitmq" / "users.toml").read_text())
    for name, deployment in objects(overlay, "Deployment").items():
        env, refs = env_of(deployment), secret_refs(deployment)
        assert env["LOGIN"]["value"] == f"cartridge_{name}"
        assert refs["LOGIN_PASSWORD"] == ("cartridge-logins", name)
        assert env["CARTRIDGE_BROKER_URL"]["value"].startswith("amqp://$(LOGIN):$(LOGIN_PASSWORD)@")
        assert env["CARTRIDGE_BROKER_DECLARE"]["value"] == "false"  # the topology is the admin's
        assert ("CARTRIDGE_STORAGE_POSTGRES_URL" in env) == (name != "actor")  # actors have no database login
        assert not {secret for secret, _ in refs.values()} & ADMIN_SECRETS, name
    job = objects(overlay, "Job")["provision"]
    c = container(job)
    assert c["command"] == COMPOSE["provision"]["command"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    refs = secret_refs(job)
    assert {f"{service.upper()}_PASSWORD" for service in users} <= refs.keys()
    assert all(refs[f"{service.upper()}_PASSWORD"] == ("cartridge-logins", service) for service in users)
    defined = set()  # Kubernetes expands $(VAR) only from variables defined above it
    for e in c["env"]:
        assert set(re.findall(r"\$\((\w+)\)", e.get("value", ""))) <= defined, e["name"]
        defined.add(e["name"])
    (volume,) = job["spec"]["template"]["spec"]["volumes"]
    assert volume["configMap"]["name"] == config_map(overlay, "cartridge-config")["metadata"]["name"]


def compose_minio_script() -> str:
    """compose's minio-init script as its shell runs it (compose turns $$ into $)."""
    (script,) = COMPOSE["minio-init"]["command"]
    return script.replace("$$", "$")


def s3_users(script: str) -> dict[str, str]:
    """Each MinIO user the script makes (<service> of cartridge_<service>) -> the variable
    holding its secret key."""
    (pairs,) = re.findall(r"set -- (.*?) &&", script)
    return dict(re.findall(r'(\w+) "\$\{(\w+)\}"', pairs))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_minio_logins_job_runs_compose_minio_init(overlay):
    """The Job minio-logins runs compose's minio-init script as it is, with the same
    variables: MinIO's endpoint from cartridge-endpoints, each service's secret key from
    cartridge-logins, the policies mounted where compose mounts them, and MinIO's root user
    from the overlay's server (single-node: the StatefulSet's Secret; operators: the
    Tenant's config.env, sourced before the script)."""
    job = objects(overlay, "Job")["minio-logins"]
    pod, c = job["spec"]["template"]["spec"], container(job)
    compose = COMPOSE["minio-init"]
    script = compose_minio_script()
    assert c["args"] == [script]
    assert c["image"] == compose["image"]
    assert job["spec"]["backoffLimit"] >= 1 and pod["restartPolicy"] == "OnFailure"
    assert {"cpu", "memory"} <= c["resources"]["requests"].keys() & c["resources"]["limits"].keys()
    env, refs = env_of(job), secret_refs(job)
    # Every S3-using service's policy file makes a user, with its password as secret key.
    users = s3_users(script)
    assert set(users) == {p.stem for p in POLICIES.glob("*.json")}
    assert all(refs[variable] == ("cartridge-logins", service) for service, variable in users.items())
    assert env["S3_ENDPOINT_URL"]["valueFrom"]["configMapKeyRef"] == {
        "name": config_map(overlay, "cartridge-endpoints")["metadata"]["name"], "key": "s3-endpoint-url"}
    assert env["MINIO_BUCKET"]["value"] == CONFIG["storage"]["s3_bucket"]
    assert compose["environment"].keys() - {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"} <= env.keys()
    # The policies, where compose mounts deploy/minio/.
    (policies_path,) = [v.split(":")[1] for v in compose["volumes"] if v.startswith("./deploy/minio:")]
    (policies,) = [v for v in pod["volumes"] if "configMap" in v]
    assert policies["configMap"]["name"] == config_map(overlay, "minio-policies")["metadata"]["name"]
    assert {"name": policies["name"], "mountPath": policies_path, "readOnly": True} in c["volumeMounts"]
    # mc writes its config: to a writable volume, the root file system being read-only.
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    writable = [m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")]
    assert any(env["MC_CONFIG_DIR"]["value"].startswith(path + "/") for path in writable)
    # MinIO's root user.
    if overlay == "single-node":
        assert c["command"] == compose["entrypoint"]
        assert refs["MINIO_ROOT_USER"] == ("cartridge-s3", "access-key")
        assert refs["MINIO_ROOT_PASSWORD"] == ("cartridge-s3", "secret-key")
    else:
        assert not {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"} & env.keys()
        (root,) = [v for v in pod["volumes"] if "secret" in v]
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == root["name"]]
        assert mount["readOnly"] is True
        # sh -c WRAPPER SCRIPT: the wrapper sources config.env, then runs SCRIPT ($0) as is.
        assert c["command"] == [*compose["entrypoint"], f'. {mount["mountPath"]}/config.env && exec /bin/sh -c "$0"']


def test_the_minio_logins_script_runs_as_compose_writes_it(tmp_path):
    """The script, run by sh with a fake `mc` that logs its arguments, makes the bucket,
    then each user with its policy file and secret key, as it would in either place."""
    fake = tmp_path / "mc"
    fake.write_text('#!/bin/sh\necho "$*" >> "$MC_LOG"\n')
    fake.chmod(0o755)
    users = s3_users(compose_minio_script())
    env = {"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "MC_LOG": str(tmp_path / "log"),
           "S3_ENDPOINT_URL": "http://minio:9000", "MINIO_ROOT_USER": "root", "MINIO_ROOT_PASSWORD": "rootpw",
           "MINIO_BUCKET": "cartridge", **{variable: f"{service}-pw" for service, variable in users.items()}}
    run = subprocess.run(["/bin/sh", "-c", container(objects("single-node", "Job")["minio-logins"])["args"][0]],
                         env=env, capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    log = (tmp_path / "log").read_text().splitlines()
    assert log[:3] == ["alias set cartridge http://minio:9000 root rootpw", "mb --ignore-existing cartridge/cartridge",
                       "anonymous set none cartridge/cartridge"]
    for service in users:
        assert f"admin policy create cartridge cartridge_{service} /policies/{service}.json" in log
        assert f"admin user add cartridge cartridge_{service} {service}-pw" in log
        assert f"admin policy attach cartridge cartridge_{service} --user cartridge_{service}" in log


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_service_logs_in_to_s3_as_itself(overlay):
    """As in compose: each service that uses S3 is MinIO user cartridge_<service>, secret
    key its own password; ingest has no S3 login; every such user is one minio-logins makes."""
    made = s3_users(compose_minio_script())
    for name, deployment in objects(overlay, "Deployment").items():
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        env, refs = env_of(deployment), secret_refs(deployment)
        in_compose = COMPOSE.get(name, {}).get("environment", {})
        if name == "ingest":
            assert not {"CARTRIDGE_STORAGE_S3_ACCESS_KEY", "CARTRIDGE_STORAGE_S3_SECRET_KEY"} & env.keys()
            assert "CARTRIDGE_STORAGE_S3_ACCESS_KEY" not in in_compose
            continue
        assert env["CARTRIDGE_STORAGE_S3_ACCESS_KEY"]["value"] == f"cartridge_{component}"
        assert refs["CARTRIDGE_STORAGE_S3_SECRET_KEY"] == ("cartridge-logins", component)
        assert component in made
        if in_compose:
            assert in_compose["CARTRIDGE_STORAGE_S3_ACCESS_KEY"] == f"cartridge_{component}"


def test_single_node_servers_take_the_apps_secrets():
    """The StatefulSets' first users are the admins the Jobs provision and minio-logins log
    in with, at the hosts the apps are told."""
    admin = secret_refs(objects("single-node", "Job")["provision"])
    s3_admin = secret_refs(objects("single-node", "Job")["minio-logins"])
    servers = {name: env_of({"spec": s["spec"]}) for name, s in objects("single-node", "StatefulSet").items()}
    ref = lambda server, var: tuple(servers[server][var]["valueFrom"]["secretKeyRef"][k] for k in ("name", "key"))
    assert ref("rabbitmq", "RABBITMQ_DEFAULT_USER") == admin["BROKER_USER"]
    assert ref("rabbitmq", "RABBITMQ_DEFAULT_PASS") == admin["BROKER_PASSWORD"]
    assert ref("postgres", "POSTGRES_USER") == admin["POSTGRES_USER"]
    assert ref("postgres", "POSTGRES_PASSWORD") == admin["POSTGRES_PASSWORD"]
    assert ref("minio", "MINIO_ROOT_USER") == s3_admin["MINIO_ROOT_USER"] == ("cartridge-s3", "access-key")
    assert ref("minio", "MINIO_ROOT_PASSWORD") == s3_admin["MINIO_ROOT_PASSWORD"] == ("cartridge-s3", "secret-key")
    assert servers["postgres"]["POSTGRES_DB"]["value"] == endpoints("single-node")["postgres-db"]
    services = {name: {p["port"] for p in s["spec"]["ports"]} for name, s in objects("single-node", "Service").items()}
    hosts = endpoints("single-node")
    assert int(hosts["broker-port"]) in services[hosts["broker-host"]]
    assert int(hosts["postgres-port"]) in services[hosts["postgres-host"]]
    s3 = urlsplit(hosts["s3-endpoint-url"])
    assert s3.port in services[s3.hostname]
    management = urlsplit(hosts["broker-management-url"])
    assert management.hostname == hosts["broker-host"] and management.port in services[management.hostname]
    (plugins,) = [m for n, m in objects("single-node", "ConfigMap").items() if n.startswith("rabbitmq-plugins-")]
    assert plugins["data"]["enabled_plugins"] == (ROOT / "deploy" / "rabbitmq" / "enabled_plugins").read_text().strip()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_ingest_on_the_transitions_queue(overlay):
    """KEDA's kinds have no schema here: the fields this deployment relies on, checked."""
    (scaled,) = objects(overlay, "ScaledObject").values()
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"name": "ingest"} and "ingest" in objects(overlay, "Deployment")
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "rabbitmq"
    meta = trigger["metadata"]
    assert meta["queueName"] == CONFIG["broker"]["transitions_queue"]
    assert meta["mode"] == "QueueLength" and float(meta["value"]) > 0
    host = urlsplit(meta["host"])
    assert host.scheme == meta["protocol"] == "amqp"
    assert (host.hostname, str(host.port)) == (endpoints(overlay)["broker-host"], endpoints(overlay)["broker-port"])
    assert host.username is None  # the login comes from the TriggerAuthentication
    auth = objects(overlay, "TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    admin = secret_refs(objects(overlay, "Job")["provision"])  # passive checks need no right; the admin's login
    assert refs == {"username": admin["BROKER_USER"], "password": admin["BROKER_PASSWORD"]}


def test_operators_resources_match_what_the_services_use():
    """The operators' kinds have no schema here: their fields this deployment relies on,
    and the names of the Services and Secrets they create, which the apps use."""
    found = {(o["apiVersion"], o["kind"]): o for o in render("operators") if (o["apiVersion"], o["kind"]) in CUSTOM}
    rabbit = found[("rabbitmq.com/v1beta1", "RabbitmqCluster")]
    postgres = found[("postgresql.cnpg.io/v1", "Cluster")]
    tenant = found[("minio.min.io/v2", "Tenant")]
    hosts = endpoints("operators")
    admin = secret_refs(objects("operators", "Job")["provision"])
    # RabbitMQ Cluster Operator: Service <name>, Secret <name>-default-user (username, password).
    assert hosts["broker-host"] == rabbit["metadata"]["name"] and hosts["broker-port"] == "5672"
    assert admin["BROKER_USER"] == (f"{rabbit['metadata']['name']}-default-user", "username")
    assert admin["BROKER_PASSWORD"] == (f"{rabbit['metadata']['name']}-default-user", "password")
    assert rabbit["spec"]["replicas"] == 1 and rabbit["spec"]["persistence"]["storage"]
    assert "rabbitmq_management" in rabbit["spec"]["rabbitmq"]["additionalPlugins"]
    assert urlsplit(hosts["broker-management-url"]).hostname == rabbit["metadata"]["name"]
    # CloudNativePG: Service <name>-rw (the primary), Secret <name>-superuser when enabled
    # (making roles takes a superuser).
    assert hosts["postgres-host"] == f"{postgres['metadata']['name']}-rw"
    assert postgres["spec"]["bootstrap"]["initdb"]["database"] == hosts["postgres-db"]
    assert postgres["spec"]["bootstrap"]["initdb"]["owner"]
    assert postgres["spec"]["enableSuperuserAccess"] is True
    assert admin["POSTGRES_USER"] == (f"{postgres['metadata']['name']}-superuser", "username")
    assert admin["POSTGRES_PASSWORD"] == (f"{postgres['metadata']['name']}-superuser", "password")
    assert postgres["spec"]["instances"] == 1 and postgres["spec"]["storage"]["size"]
    # MinIO Operator: Service <name> on port 80 without TLS; the bucket made up front; the
    # root user in the Secret `configuration` names (key config.env), which the Job
    # minio-logins mounts to make the services' users (so the Tenant makes none).
    assert tenant["spec"]["requestAutoCert"] is False
    s3 = urlsplit(hosts["s3-endpoint-url"])
    assert (s3.scheme, s3.hostname, s3.port) == ("http", tenant["metadata"]["name"], None)
    assert "users" not in tenant["spec"]
    assert {"name": CONFIG["storage"]["s3_bucket"]} in tenant["spec"]["buckets"]
    job = objects("operators", "Job")["minio-logins"]["spec"]["template"]["spec"]
    (root,) = [v for v in job["volumes"] if "secret" in v]
    assert root["secret"]["secretName"] == tenant["spec"]["configuration"]["name"]
    assert {"key": "config.env", "path": "config.env"} in root["secret"]["items"]
    (pool,) = tenant["spec"]["pools"]
    assert pool["servers"] == 1 and pool["volumesPerServer"] == 1
    for server in (rabbit["spec"], postgres["spec"], pool):
        assert {"cpu", "memory"} <= server["resources"]["requests"].keys() & server["resources"]["limits"].keys()


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion ($$ escapes a dollar)."""
    return re.sub(r"\$\$|\$\((\w+)\)", lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), value)


def pod_environment(deployment: dict, config_maps: dict[str, dict], secrets: dict[str, dict]) -> dict[str, str]:
    """The container's environment as the kubelet builds it from the ConfigMaps and Secrets."""
    env: dict[str, str] = {}
    for e in container(deployment).get("env", []):
        source = e.get("valueFrom", {})
        if "secretKeyRef" in source:
            env[e["name"]] = secrets[source["secretKeyRef"]["name"]][source["secretKeyRef"]["key"]]
        elif "configMapKeyRef" in source:
            env[e["name"]] = config_maps[source["configMapKeyRef"]["name"]][source["configMapKeyRef"]["key"]]
        else:
            env[e["name"]] = expand(e["value"], env)
    return env


def web_available() -> bool:
    return (ROOT / "cartridge" / "web").is_dir()


@pytest.mark.parametrize("service", ["ingest", "web"])
def test_probe_paths_answer_on_the_running_service(service, postgres_url, broker_names, s3_endpoint, test_id, tmp_path):
    """The service started as its Deployment starts it (command, environment from the
    ConfigMaps and Secrets, config.toml from the ConfigMap), only the servers' addresses
    pointed at this machine and its ports moved to free ones, after the Job provision made
    its login (this test's own: LOGIN t<id>_<service>): every probe path the manifests name
    answers 200 on the port it names once it runs."""
    if service == "web" and not web_available():
        pytest.skip("`cartridge web` is not on this branch")
    prefix = f"t{test_id}_"
    deployment = json.loads(json.dumps(objects("single-node", "Deployment")[service]))
    (login,) = [e for e in container(deployment)["env"] if e["name"] == "LOGIN"]
    login["value"] = login["value"].replace("cartridge_", prefix)
    config_maps = {m["metadata"]["name"]: dict(m["data"]) for m in objects("single-node", "ConfigMap").values()}
    endpoints_name = config_map("single-node", "cartridge-endpoints")["metadata"]["name"]
    s3 = urlsplit(s3_endpoint)
    config_maps[endpoints_name].update({
        "broker-host": "127.0.0.1", "broker-port": "5672", "broker-management-url": "http://127.0.0.1:15672",
        "postgres-host": "127.0.0.1", "postgres-port": "5432", "postgres-db": urlsplit(postgres_url).path[1:],
        "s3-endpoint-url": f"{s3.scheme}://{s3.netloc}"})
    secrets = {"cartridge-broker": {"username": "guest", "password": "guest"},
               "cartridge-postgres": {"username": "postgres", "password": "unused-with-trust-auth"},
               "cartridge-logins": {s: f"{s}-{test_id}" for s in ("actor", "ingest", "trainer", "evaluator", "operator", "web")}}
    env = pod_environment(deployment, config_maps, secrets)
    config_file = tmp_path / "etc" / "config.toml"  # the ConfigMap's file, where the mount puts it
    config_file.parent.mkdir()
    config_file.write_text(config_maps[config_map("single-node", "cartridge-config")["metadata"]["name"]]["config.toml"])
    assert env["CARTRIDGE_CONFIG"] == "/etc/cartridge/config.toml"
    env["CARTRIDGE_CONFIG"] = str(config_file)
    c = container(deployment)
    ports: dict[str, int] = {}  # a pod has its ports to itself; this machine does not
    for declared in c["ports"]:
        variable = {"metrics": "CARTRIDGE_METRICS_PORT", "http": "CARTRIDGE_WEB_PORT"}[declared["name"]]
        assert env[variable] == str(declared["containerPort"]), (service, variable)
        while (port := free_port()) in ports.values():
            pass
        ports[declared["name"]] = port
        env[variable], env[variable.replace("PORT", "HOST")] = str(port), "127.0.0.1"
    names = {  # this test's own queues
        "CARTRIDGE_BROKER_TRANSITIONS_QUEUE": broker_names["transitions_queue"],
        "CARTRIDGE_BROKER_DEAD_LETTER_EXCHANGE": broker_names["dead_letter_exchange"],
        "CARTRIDGE_BROKER_DEAD_LETTER_QUEUE": broker_names["dead_letter_queue"],
        "CARTRIDGE_BROKER_MODELS_EXCHANGE": broker_names["models_exchange"],
        "CARTRIDGE_BROKER_EVALUATOR_QUEUE": broker_names["evaluator_queue"],
        "CARTRIDGE_BROKER_HEARTBEATS": broker_names["heartbeats"]}
    env.update({**names, "CARTRIDGE_STORAGE_S3_BUCKET": f"cartridge-k8s-{test_id}"})  # and bucket
    base = {k: v for k, v in os.environ.items() if not k.startswith("CARTRIDGE_")}
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
    base["PYTHONPATH"] = str(ROOT)
    job = objects("single-node", "Job")["provision"]
    job_env = {**pod_environment(job, config_maps, secrets), **names, "CARTRIDGE_CONFIG": str(config_file)}
    log = tmp_path / f"{service}.log"
    proc = None
    try:
        provision = subprocess.run([*container(job)["command"], "--prefix", prefix], env={**base, **job_env},
                                   cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert provision.returncode == 0, provision.stderr[-3000:]
        proc = subprocess.Popen(c["command"], env={**base, **env}, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        urls = {f"http://127.0.0.1:{ports[c[probe]['httpGet']['port']]}{c[probe]['httpGet']['path']}"
                for probe in ("startupProbe", "livenessProbe", "readinessProbe")}
        answers: dict[str, tuple[int, str]] = {}
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            answers = {url: get(url) for url in urls}
            if all(status == 200 for status, _ in answers.values()):
                break
            time.sleep(0.5)
        assert all(status == 200 for status, _ in answers.values()), (answers, log.read_text()[-3000:])
        for port in ports.values():  # a wrong path (or port) would fail
            assert get(f"http://127.0.0.1:{port}/no-such-probe")[0] == 404
    finally:
        code = 0
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
        asyncio.run(delete_logins(prefix, postgres_url))
    assert code == 0, log.read_text()[-3000:]


# Secrets an operator writes for the resource it runs, not created by hand.
OPERATOR_SECRETS = {"rabbitmq-default-user", "postgres-app", "postgres-superuser"}


def referenced_secrets(overlay: str) -> dict[str, set[str]]:
    """Secret name -> the keys the rendered overlay reads from it."""
    refs: dict[str, set[str]] = {}
    workloads = [*objects(overlay, "Deployment").values(), *objects(overlay, "StatefulSet").values(),
                 *objects(overlay, "Job").values()]
    for workload in workloads:
        for c in workload["spec"]["template"]["spec"]["containers"]:
            for e in c.get("env", []):
                if "secretKeyRef" in e.get("valueFrom", {}):
                    ref = e["valueFrom"]["secretKeyRef"]
                    refs.setdefault(ref["name"], set()).add(ref["key"])
        for volume in workload["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in volume:
                refs.setdefault(volume["secret"]["secretName"], set()).update(i["key"] for i in volume["secret"]["items"])
    for auth in objects(overlay, "TriggerAuthentication").values():
        for ref in auth["spec"]["secretTargetRef"]:
            refs.setdefault(ref["name"], set()).add(ref["key"])
    for tenant in objects(overlay, "Tenant").values():
        refs.setdefault(tenant["spec"]["configuration"]["name"], set()).add("config.env")
    return refs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_readme_creates_every_secret_the_overlay_reads(overlay):
    readme = (ROOT / "README.md").read_text()
    blocks = [b for b in re.findall(r"```sh\n(.*?)```", readme, re.S)
              if f"kubectl apply -k deploy/kubernetes/overlays/{overlay}\n" in b]
    assert len(blocks) == 1, f"the README shows no (or more than one) way to apply {overlay}"
    created: dict[str, set[str]] = {}
    for command in blocks[0].split("kubectl ")[1:]:
        if command.startswith("create secret generic "):
            name = command.split()[3]
            created[name] = set(re.findall(r"--from-literal=([\w.-]+)=", command))
    needed = {name: keys for name, keys in referenced_secrets(overlay).items() if name not in OPERATOR_SECRETS}
    assert created == needed
