"""Deployment artefacts, checked without a Docker engine or a Kubernetes cluster.

- deploy/Dockerfile and .dockerignore: stages, non-root user, HEALTHCHECK (run for real against
  the server), the runtime packages (they exist in Debian 12 and cover every library the binary
  links), the build context (every file meson.build reads gets into it), and the server run as
  that user on a read-only root filesystem with only /tmp writable.
- deploy/k8s: `kubectl kustomize` renders each overlay (KUBECONFIG=/dev/null: no cluster is
  ever contacted); every object validates (tests/deploy/validate-k8s.mjs: kubernetes-models
  schemas plus unknown fields; hand-written minimal schemas for the CloudNativePG and Prometheus
  Operator resources); probes, security, shutdown timing, database wiring, references between
  objects, and every environment variable is one `cangrejo help` lists, with values its
  configuration parser accepts.
- deploy/prometheus (promtool check rules, promtool test rules, the PrometheusRule mirrors it)
  and deploy/grafana: every metric name and label in every PromQL expression is on the running
  server's /metrics.
- yamllint with the committed .yamllint.
"""

import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import requests
import yaml

from helpers import (
    REPO_ROOT,
    TEST_PII_MASTER_KEY,
    TEST_SECRET,
    free_port,
    headers,
    make_token,
    sanitizer_reports,
    wait_for_http,
)

DEPLOY = os.path.join(REPO_ROOT, "deploy")
DOCKERFILE = os.path.join(DEPLOY, "Dockerfile")
K8S = os.path.join(DEPLOY, "k8s")
OVERLAYS = ("dev", "prod")
SECRET_TEMPLATE = os.path.join(K8S, "base", "secret.template.yaml")
RULES = os.path.join(DEPLOY, "prometheus", "cangrejo-rules.yml")
PROMETHEUSRULE = os.path.join(K8S, "base", "prometheusrule.yaml")
DASHBOARD = os.path.join(DEPLOY, "grafana", "dashboards", "cangrejo.json")
GRAFANA_PROVISIONING = os.path.join(DEPLOY, "grafana", "provisioning")
TESTS_DEPLOY = os.path.join(REPO_ROOT, "tests", "deploy")

# Libraries a sanitizer build links that a release build (the image's) does not.
SANITIZER_LIBS = re.compile(r"^lib(asan|ubsan|lsan|tsan)\.so")
# Environment variables read by libpq inside the server, which `cangrejo help` does not list.
LIBPQ_ENV = {"PGPASSWORD"}
# Labels Prometheus and the Prometheus Operator add to every scraped series.
TARGET_LABELS = {"namespace", "pod", "job", "instance", "service", "endpoint", "container"}
# Series Prometheus records itself for each target, not exported by the server.
PROMETHEUS_SERIES = {"up"}
# Metrics the dashboard and rules use that the server does not export yet: each would be
# xfail(strict=True), so the check starts failing when it appears. None today.
MISSING_METRICS = {}
# Cluster-made Secrets and keys the manifests may use besides the template's: CloudNativePG's
# (<cluster>-app, <cluster>-ca) and the Ingress certificate (cert-manager or by hand).
CNPG_SECRET_KEYS = {"-app": {"username", "password"}, "-ca": {"ca.crt"}}
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                           "persistentVolumeClaim", "projected", "secret"}


# ---------------------------------------------------------------------------------------------
# helpers: Dockerfile


@functools.lru_cache(maxsize=None)
def dockerfile_stages():
    """[{'name', 'base', 'instructions': [(KEYWORD, argument text)]}] of deploy/Dockerfile
    (continuation lines joined, comments dropped), and the global ARG defaults."""
    with open(DOCKERFILE, encoding="utf-8") as f:
        text = f.read()
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if current and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    args, stages = {}, []
    for line in logical:
        keyword, _, rest = line.strip().partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            assert m, f"cannot read FROM {rest}"
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda v: args[v.group(1) or v.group(2)],
                          m.group(1))
            stages.append({"name": m.group(2), "base": base, "instructions": []})
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stages[-1]["instructions"].append((keyword, rest))
    return stages, args


def stage_instructions(stage, keyword):
    return [rest for kw, rest in stage["instructions"] if kw == keyword]


def apt_installed(stage):
    """Package names of the stage's `apt-get install` commands."""
    packages = []
    for run in stage_instructions(stage, "RUN"):
        for command in re.split(r"&&|;", run):
            words = shlex.split(command)
            if "apt-get" in words and "install" in words:
                after = words[words.index("install") + 1:]
                packages += [w for w in after if not w.startswith("-")]
    return packages


def runtime_stage():
    stages, _ = dockerfile_stages()
    return stages[-1]


def healthcheck_command():
    """The HEALTHCHECK's CMD as an argv list (exec form)."""
    (hc,) = stage_instructions(runtime_stage(), "HEALTHCHECK")
    m = re.search(r"\bCMD\s+(\[.*\])\s*$", hc)
    assert m, f"HEALTHCHECK must use the exec form CMD [...]: {hc}"
    return json.loads(m.group(1))


def runtime_user():
    (user,) = stage_instructions(runtime_stage(), "USER")
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


def dockerignore_excludes(path):
    """True when .dockerignore keeps `path` (relative to the repository) out of the build
    context (Docker's rules: patterns in order, the last match wins, a directory pattern covers
    what is below it)."""
    import fnmatch

    with open(os.path.join(REPO_ROOT, ".dockerignore"), encoding="utf-8") as f:
        patterns = [p.strip() for p in f if p.strip() and not p.startswith("#")]
    excluded = False
    parts = path.strip("/").split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        for i in range(1, len(parts) + 1):
            if fnmatch.fnmatchcase("/".join(parts[:i]), pat):
                excluded = not negate
                break
    return excluded


def dpkg_owner(library_path):
    """The Debian package that ships a library file (trying the usrmerge spellings)."""
    real = os.path.realpath(library_path)
    candidates = {library_path, real}
    for p in list(candidates):
        candidates.add(p[4:] if p.startswith("/usr/") else "/usr" + p)
    for p in sorted(candidates):
        r = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.split(":")[0].strip()
    return None


def server_binary():
    binary = os.path.abspath(os.environ.get("CANGREJO_BIN",
                                            os.path.join(REPO_ROOT, "build-test", "cangrejo")))
    if not os.access(binary, os.X_OK):
        pytest.fail(f"server binary {binary} not found (set CANGREJO_BIN)", pytrace=False)
    return binary


# ---------------------------------------------------------------------------------------------
# helpers: Kubernetes


def kubectl():
    path = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not path:
        pytest.fail("kubectl not found: install Debian's kubernetes-client (deploy/local/deps.sh "
                    "--test), which has `kubectl kustomize`", pytrace=False)
    return path


@functools.lru_cache(maxsize=None)
def render(overlay):
    """The objects `kubectl kustomize deploy/k8s/overlays/<overlay>` renders (never a cluster:
    KUBECONFIG=/dev/null), and its stderr."""
    env = dict(os.environ, KUBECONFIG="/dev/null")
    proc = subprocess.run([kubectl(), "kustomize", os.path.join(K8S, "overlays", overlay)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, f"kubectl kustomize {overlay} failed:\n{proc.stderr}"
    objects = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return objects, proc.stderr


def objects_of(overlay, kind=None, name=None):
    objects, _ = render(overlay)
    return [o for o in objects if (kind is None or o["kind"] == kind)
            and (name is None or o["metadata"]["name"] == name)]


def one(overlay, kind, name=None):
    found = objects_of(overlay, kind, name)
    assert len(found) == 1, f"{overlay}: want one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_templates(overlay):
    """(object id, pod spec, pod labels) of every workload."""
    for o in objects_of(overlay):
        spec = None
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            spec = o["spec"]["template"]
        elif o["kind"] == "CronJob":
            spec = o["spec"]["jobTemplate"]["spec"]["template"]
        if spec is not None:
            yield f"{o['kind']}/{o['metadata']['name']}", spec["spec"], spec["metadata"]["labels"]


def cangrejo_image(overlay):
    return one(overlay, "Deployment", "cangrejo")["spec"]["template"]["spec"]["containers"][0][
        "image"]


def cangrejo_containers(overlay):
    """(object id, container, pod spec) of every container running the cangrejo image."""
    image = cangrejo_image(overlay)
    for oid, pod, _ in pod_templates(overlay):
        for c in pod["containers"] + pod.get("initContainers", []):
            if c["image"] == image:
                yield oid, c, pod


def configmap_data(overlay, name):
    return one(overlay, "ConfigMap", name)["data"]


def container_env(overlay, container):
    """{name: value or ('secret', name, key)} of a container: envFrom ConfigMaps, then env."""
    env = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"envFrom only from ConfigMaps: {source}"
        env.update(configmap_data(overlay, source["configMapRef"]["name"]))
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = ("secret", ref["name"], ref["key"])
    return env


def selector_matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


@functools.lru_cache(maxsize=None)
def known_env_vars():
    """The variables `cangrejo help` lists, their _FILE forms where it names them, and libpq's."""
    out = subprocess.run([server_binary(), "help"], capture_output=True, text=True, timeout=30,
                         env={"PATH": os.environ.get("PATH", "")}).stdout
    section = out.split("Environment variables", 1)[1]
    names = set(re.findall(r"^ {2}([A-Z][A-Z0-9_]+)\s", section, re.M))
    names |= set(re.findall(r"\b([A-Z][A-Z0-9_]+_FILE)\b", section))
    assert "DATABASE_URL" in names and "JWT_HS256_SECRET_FILE" in names, section
    return names | LIBPQ_ENV


def secret_template():
    with open(SECRET_TEMPLATE, encoding="utf-8") as f:
        return yaml.safe_load(f)


def routes():
    """(method, path) of the server's route table in server/main.c."""
    with open(os.path.join(REPO_ROOT, "server", "main.c"), encoding="utf-8") as f:
        return re.findall(r'\{SRV_(GET|POST|PUT|DELETE|PATCH),\s*"([^"]+)"', f.read())


def ms_to_s(value):
    return -(-int(value) // 1000)


# ---------------------------------------------------------------------------------------------
# helpers: PromQL


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<var>\$\{?[A-Za-z_][A-Za-z0-9_]*\}?)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}\[\]@])
""", re.X)
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_AGGREGATORS = {"sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk",
                "quantile", "count_values", "group", "limitk", "limit_ratio"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}


def promql_parts(expr):
    """(selectors, grouping labels) of a PromQL expression: selectors are
    (metric name, [(label, op, value)]); grouping labels those of by/without/on/ignoring/
    group_left/group_right clauses."""
    tokens, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        assert m, f"cannot read PromQL at {expr[pos:pos + 20]!r} in {expr!r}"
        pos = m.end()
        if m.lastgroup != "ws":
            tokens.append((m.lastgroup, m.group()))
    selectors, grouping, i = [], [], 0

    def matchers(start):  # tokens[start] is "{"; returns (matchers, index after "}")
        found, j = [], start + 1
        while tokens[j][1] != "}":
            if tokens[j][1] == ",":
                j += 1
                continue
            label, op, value = tokens[j][1], tokens[j + 1][1], tokens[j + 2][1]
            found.append((label, op, json.loads(value) if value.startswith('"') else value[1:-1]))
            j += 3
        return found, j + 1

    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else None
        if text == "[":
            while tokens[i][1] != "]":
                i += 1
            i += 1
        elif kind == "ident" and text in _GROUPING:
            i += 1
            if nxt == "(":
                i += 1
                while tokens[i][1] != ")":
                    if tokens[i][0] == "ident":
                        grouping.append(tokens[i][1])
                    i += 1
                i += 1
        elif kind == "ident" and (text in _KEYWORDS or nxt == "(" or
                                  (text in _AGGREGATORS and nxt in ("by", "without"))):
            i += 1
        elif kind == "ident":
            if nxt == "{":
                found, i = matchers(i + 1)
            else:
                found, i = [], i + 1
            selectors.append((text, found))
        elif text == "{":
            found, i = matchers(i)
            names = [v for label, op, v in found if label == "__name__" and op == "="]
            assert names, f"a selector without a metric name in {expr!r}"
            selectors.append((names[0], [f for f in found if f[0] != "__name__"]))
        else:
            i += 1
    return selectors, grouping


def rules_exprs():
    with open(RULES, encoding="utf-8") as f:
        groups = yaml.safe_load(f)["groups"]
    return [(f"rule {r.get('alert') or r.get('record')}", r["expr"])
            for g in groups for r in g["rules"]]


def dashboard():
    with open(DASHBOARD, encoding="utf-8") as f:
        return json.load(f)


def dashboard_panels():
    for p in dashboard()["panels"]:
        yield p
        yield from p.get("panels", [])


def dashboard_exprs():
    return [(f"panel {p['title']!r}", t["expr"]) for p in dashboard_panels()
            for t in p.get("targets", [])]


def template_queries():
    """(metric, label) of the dashboard's label_values() variables."""
    found = []
    for v in dashboard()["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,\s*(\w+)\s*\)", q)
            assert m, f"dashboard variable {v['name']}: unexpected query {q!r}"
            found.append((m.group(1), m.group(2)))
    return found


def all_selectors():
    """{metric name: [(where, matchers)]} over the dashboard and the rules."""
    found = {}
    for where, expr in dashboard_exprs() + rules_exprs():
        for name, matchers in promql_parts(expr)[0]:
            found.setdefault(name, []).append((where, matchers))
    for name, label in template_queries():
        found.setdefault(name, []).append(("dashboard variable", []))
    return found


def metric_name_params():
    params = []
    for name in sorted(all_selectors()):
        marks = []
        if name in MISSING_METRICS:
            marks = [pytest.mark.xfail(strict=True, reason=MISSING_METRICS[name])]
        params.append(pytest.param(name, id=name, marks=marks))
    return params


def parse_exposition(text):
    """({family: type}, {sample name: [labels dict]}) of a Prometheus text exposition."""
    families, samples = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            families[name] = kind.strip()
        elif line and not line.startswith("#"):
            m = re.match(r"([A-Za-z_:][\w:]*)(\{(.*)\})?\s", line)
            assert m, f"unreadable /metrics line {line!r}"
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
            samples.setdefault(m.group(1), []).append(labels)
    return families, samples


def exported(name, families, samples):
    """True when `name` is a series of the exposition (or of a declared family: a histogram's
    _bucket/_sum/_count, or a family without a sample yet)."""
    if name in samples or name in families:
        return True
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and families.get(name[: -len(suffix)]) == "histogram":
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_is_multi_stage_on_debian_12_slim_and_runs_as_non_root():
    stages, _ = dockerfile_stages()
    assert len(stages) >= 2, "want a build stage and a runtime stage"
    for s in stages:
        assert s["base"] == "debian:12-slim", s
    build, runtime = stages[0], stages[-1]
    assert build["name"] and runtime["name"], "name the stages (FROM ... AS name)"
    assert "meson" in " ".join(stage_instructions(build, "RUN"))
    assert "buildtype=release" in " ".join(stage_instructions(build, "RUN"))
    # Runtime: the binary from the build stage and nothing else.
    copies = stage_instructions(runtime, "COPY") + stage_instructions(runtime, "ADD")
    assert copies == [f"--from={build['name']} /build/cangrejo /usr/local/bin/cangrejo"], copies
    assert not set(apt_installed(runtime)) & {"build-essential", "meson", "gcc", "curl"}
    for run in stage_instructions(runtime, "RUN") + stage_instructions(build, "RUN"):
        if "apt-get install" in run:
            assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists" in run, run
    uid, gid = runtime_user()
    assert uid >= 1000 and gid >= 1000, "a numeric non-root USER"
    # The USER comes after every RUN (which would otherwise run as that user or undo it).
    kinds = [kw for kw, _ in runtime["instructions"]]
    assert kinds.index("USER") > max(i for i, kw in enumerate(kinds) if kw == "RUN")
    assert stage_instructions(runtime, "ENTRYPOINT") == ['["/usr/local/bin/cangrejo"]']
    assert stage_instructions(runtime, "CMD") == ['["serve"]']
    assert stage_instructions(runtime, "EXPOSE") == ["8080"]
    for env in stage_instructions(runtime, "ENV"):
        name = env.split("=", 1)[0]
        assert name in known_env_vars(), f"Dockerfile ENV {name} is not a cangrejo variable"
    hc = healthcheck_command()
    assert hc[0] == "/bin/bash" and "/livez" in hc[-1]


def test_dockerfile_packages_exist_in_debian_12():
    packages = apt_installed(dockerfile_stages()[0][0]) + apt_installed(runtime_stage())
    assert packages
    proc = subprocess.run(["apt-cache", "show", "--no-all-versions", *packages],
                          capture_output=True, text=True)
    found = set(re.findall(r"^Package: (\S+)$", proc.stdout, re.M))
    missing = sorted(set(packages) - found)
    assert not missing, (f"not in this machine's Debian 12 package lists: {missing} "
                         f"(apt-get update first if the lists are empty)\n{proc.stderr}")


def test_runtime_packages_cover_every_library_the_binary_links():
    binary = server_binary()
    needed = re.findall(r"NEEDED\s+(\S+)",
                        subprocess.run(["objdump", "-p", binary], capture_output=True, text=True,
                                       check=True).stdout)
    cache = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    runtime = set(apt_installed(runtime_stage()))
    owners = {}
    for lib in needed:
        if SANITIZER_LIBS.match(lib):
            continue
        m = re.search(r"^\s+" + re.escape(lib) + r" \(.*x86-64.*\) => (\S+)$", cache, re.M)
        assert m, f"{lib} not in the linker cache"
        owners[lib] = dpkg_owner(m.group(1))
        assert owners[lib], f"no Debian package ships {m.group(1)}"
    # glibc is in every Debian image; everything else must be installed by the runtime stage.
    missing = {lib: pkg for lib, pkg in owners.items() if pkg not in runtime | {"libc6"}}
    assert not missing, f"libraries the binary links whose package the runtime lacks: {missing}"
    # Merchant time zones are checked against the zoneinfo files.
    with open(os.path.join(REPO_ROOT, "handlers", "validate.c"), encoding="utf-8") as f:
        if "/usr/share/zoneinfo" in f.read():
            assert "tzdata" in runtime


def test_build_context_holds_every_file_meson_reads():
    stages, _ = dockerfile_stages()
    sources = []
    for copy in stage_instructions(stages[0], "COPY"):
        words = copy.split()
        assert not any(w.startswith("--from") for w in words)
        sources += [w.rstrip("/") for w in words[:-1]]
    with open(os.path.join(REPO_ROOT, "meson.build"), encoding="utf-8") as f:
        meson = f.read()
    read = {"meson.build", "meson_options.txt"}
    # files('dir/file'), scripts; not the start of a concatenation ('tests/unit/test_' + t)
    read |= set(re.findall(r"'([\w.-]+/[\w./-]+)'(?!\s*\+)", meson))
    # foreach t : unit_tests -> tests/unit/test_<t>.c (and their shared header)
    unit_tests = meson.split("unit_tests = [", 1)[1].split("]", 1)[0]
    read |= {f"tests/unit/test_{t}.c" for t in re.findall(r"'(\w+)'", unit_tests)}
    for subdir in re.findall(r"subdir\('([^']+)'\)", meson):
        read.add(subdir + "/meson.build")
    # tests/fuzz is read only with -Dfuzz=true, which the image does not use.
    read = {p for p in read if not p.startswith("tests/fuzz")}
    for path in sorted(read):
        assert os.path.exists(os.path.join(REPO_ROOT, path)), f"meson.build reads {path}?"
        assert any(path == s or path.startswith(s + "/") for s in sources), \
            f"deploy/Dockerfile's build stage does not COPY {path}"
        assert not dockerignore_excludes(path), f".dockerignore keeps {path} out of the context"
    for excluded in ("build-test/cangrejo", ".local/x", "node_modules/x", ".git/HEAD"):
        assert dockerignore_excludes(excluded), f".dockerignore lets {excluded} in"


class _Status503(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(503)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_healthcheck_command_passes_on_a_live_server_and_fails_otherwise(server):
    argv = healthcheck_command()

    def run(listen):
        env = {"PATH": "/usr/bin:/bin", "CANGREJO_LISTEN": listen}
        return subprocess.run(argv, env=env, capture_output=True, timeout=10).returncode

    assert run(f"0.0.0.0:{server.port}") == 0
    closed = free_port()
    assert run(f"0.0.0.0:{closed}") != 0
    unhealthy = HTTPServer(("127.0.0.1", free_port()), _Status503)
    thread = threading.Thread(target=unhealthy.serve_forever, daemon=True)
    thread.start()
    try:
        assert run(f"0.0.0.0:{unhealthy.server_address[1]}") != 0
    finally:
        unhealthy.shutdown()
        unhealthy.server_close()


READ_ONLY_ROOT = r"""
set -eu
# The binary is copied where the image has it outside /tmp (the checkout may live under /tmp,
# which the fresh tmpfs below hides), on a mount of its own that turns read-only with the rest.
mount -t tmpfs -o size=512m tmpfs /mnt
cp "$BIN" /mnt/cangrejo
BIN=/mnt/cangrejo
findmnt -rn -o TARGET | sort -u | while read -r m; do
    case "$m" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue ;; esac
    mount -o remount,bind,ro "$m" 2>/dev/null || echo "could not make $m read-only" >&2
done
mount -t tmpfs -o size=16m,mode=1777 tmpfs /tmp
for d in / /etc /usr /var "$(dirname "$BIN")"; do
    if touch "$d/.cangrejo-rofs-probe" 2>/dev/null; then echo "$d still writable" >&2; exit 97; fi
done
exec setpriv --reuid "$UID_" --regid "$GID_" --clear-groups --no-new-privs "$BIN" serve
"""


def test_server_runs_as_the_image_user_on_a_read_only_root_filesystem(stack, server):
    """The image's contract (readOnlyRootFilesystem, only /tmp writable, USER uid:gid),
    emulated in a private mount namespace: every mount read-only, a fresh tmpfs on /tmp."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("setpriv"):
        pytest.skip("needs root, unshare and setpriv (util-linux) for a private mount namespace")
    uid, gid = runtime_user()
    port = free_port()
    env = dict(server.env, CANGREJO_LISTEN=f"127.0.0.1:{port}", UID_=str(uid), GID_=str(gid),
               BIN=server.binary)
    log = tempfile.NamedTemporaryFile(prefix="cangrejo-rofs-", suffix=".log", delete=False)
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--",
                             "/bin/sh", "-c", READ_ONLY_ROOT], env=env, stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert wait_for_http(f"http://127.0.0.1:{port}/readyz", 30, proc=proc), \
            open(log.name).read()[-4000:]
        base = f"http://127.0.0.1:{port}"
        with open(f"/proc/{proc.pid}/status") as f:
            ids = dict(line.split(":", 1) for line in f if line.startswith(("Uid", "Gid")))
        assert ids["Uid"].split()[:2] == [str(uid)] * 2 and ids["Gid"].split()[0] == str(gid)
        assert os.readlink(f"/proc/{proc.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        assert requests.get(base + "/livez", timeout=5).status_code == 200
        merchant = int(time.time() * 1000) % 10**9 + 7 * 10**11
        token = make_token(scope="merchants:admin orders:write metrics:read",
                           merchants=[merchant])
        r = requests.put(f"{base}/v1/merchants/{merchant}", headers=headers(token), timeout=10,
                         json={"name": "RO", "timezone": "Asia/Kathmandu", "currency": "NPR"})
        assert r.status_code == 201, r.text  # the time zone is read from /usr/share/zoneinfo
        t0 = time.time()
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0))
        r = requests.post(f"{base}/v1/merchants/{merchant}/orders", headers=headers(token),
                          timeout=10, json={
                              "order_id": "ro-1", "store_id": 1, "channel": "pos",
                              "fulfillment": "pickup", "placed_at": now, "currency": "NPR",
                              "items": [{"sku": "X", "name": "X", "quantity": 1,
                                         "unit_price_cents": 100}],
                              "customer": {"ref": "c1", "email": "a@example.com"}})
        assert r.status_code == 201, r.text
        day = time.strftime("%Y-%m-%d", time.gmtime(t0))
        tomorrow = time.strftime("%Y-%m-%d", time.gmtime(t0 + 86400))
        r = requests.get(f"{base}/v1/merchants/{merchant}/metrics/sales", headers=headers(token),
                         params={"from": day, "to": tomorrow, "tz": "UTC"}, timeout=10)
        assert r.status_code == 200 and r.json()["buckets"][0]["orders"] == 1, r.text
        assert requests.get(base + "/metrics", timeout=5).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(40) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        text = open(log.name, encoding="utf-8", errors="replace").read()
        os.unlink(log.name)
    assert f"listening on 127.0.0.1:{port}" in text, text[-4000:]
    assert "Read-only file system" not in text and "still writable" not in text, text[-4000:]
    assert not sanitizer_reports(text), text[-4000:]


# ---------------------------------------------------------------------------------------------
# Kubernetes: rendering and schemas


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_offline(overlay):
    objects, stderr = render(overlay)
    # Newer kustomize reads the v2.0.3 fields Debian's kubectl needs, with a deprecation note.
    for line in stderr.splitlines():
        assert re.fullmatch(r"# Warning: '\w+' is deprecated\..*", line), stderr
    ids = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(ids) == len(set(ids))
    namespace = one(overlay, "Namespace")["metadata"]["name"]
    for o in objects:
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == namespace, o["metadata"]
    assert not objects_of(overlay, "Secret"), "no Secret is rendered: see secret.template.yaml"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates(overlay):
    objects, _ = render(overlay)
    proc = subprocess.run(["node", os.path.join(TESTS_DEPLOY, "validate-k8s.mjs")],
                          input=json.dumps(objects), capture_output=True, text=True, timeout=120,
                          cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert len(report["checked"]) == len(objects)
    by = {c["by"] for c in report["checked"]}
    assert by == {"kubernetes-models", "crd-schemas.json"}


def test_validator_catches_misspelt_and_mistyped_fields():
    deployment = json.loads(json.dumps(one("prod", "Deployment", "cangrejo")))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFileSystem"] = True
    container["ports"][0]["containerPort"] = "8080"
    cluster = json.loads(json.dumps(one("prod", "Cluster")))
    cluster["spec"]["instance"] = 3
    rule = json.loads(json.dumps(one("prod", "PrometheusRule")))
    del rule["spec"]["groups"][0]["rules"][0]["expr"]
    proc = subprocess.run(["node", os.path.join(TESTS_DEPLOY, "validate-k8s.mjs")],
                          input=json.dumps([deployment, cluster, rule]), capture_output=True,
                          text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 1
    errors = "\n".join(json.loads(proc.stdout)["errors"])
    assert "securityContext.readOnlyRootFileSystem: unknown field" in errors
    assert "containerPort must be integer" in errors
    assert '"additionalProperty":"instance"' in errors
    assert "must have required property 'expr'" in errors


def test_yamllint():
    proc = subprocess.run(["yamllint", "-c", os.path.join(REPO_ROOT, ".yamllint"), "-f",
                           "parsable", "deploy", "tests/deploy", ".yamllint"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------
# Kubernetes: what the objects say


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_part_is_there(overlay):
    for kind, name in [("Deployment", "cangrejo"), ("Service", "cangrejo"),
                       ("HorizontalPodAutoscaler", "cangrejo"),
                       ("PodDisruptionBudget", "cangrejo"), ("NetworkPolicy", "cangrejo"),
                       ("NetworkPolicy", "cangrejo-db"), ("NetworkPolicy", "cangrejo-redis"),
                       ("Job", "cangrejo-migrate"), ("CronJob", "cangrejo-retention"),
                       ("Cluster", "cangrejo-db"), ("Deployment", "cangrejo-redis"),
                       ("Service", "cangrejo-redis"), ("Ingress", "cangrejo"),
                       ("ServiceMonitor", "cangrejo"), ("PrometheusRule", "cangrejo"),
                       ("ServiceAccount", "cangrejo")]:
        one(overlay, kind, name)
    assert re.fullmatch(r"cangrejo-config-[a-z0-9]+", one(overlay, "ConfigMap")["metadata"]["name"])
    cluster = one(overlay, "Cluster")["spec"]
    assert cluster["instances"] == 3, "one primary and two replicas"
    assert one(overlay, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "cangrejo"}
    assert "replicas" not in one(overlay, "Deployment", "cangrejo")["spec"], \
        "the HPA owns the replica count: an applied spec.replicas would reset it"
    commands = {oid: c.get("args") for oid, c, _ in cangrejo_containers(overlay)}
    assert commands == {"Deployment/cangrejo": ["serve"], "Job/cangrejo-migrate": ["migrate"],
                        "CronJob/cangrejo-retention": ["retention"]}
    image = cangrejo_image(overlay)
    assert ":" in image and not image.endswith(":latest"), image
    assert int(configmap_data(overlay, one(overlay, "ConfigMap")["metadata"]["name"])[
        "ORDER_RETENTION_MONTHS"]) > 0, "`cangrejo retention` refuses ORDER_RETENTION_MONTHS=0"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_point_at_the_servers_health_routes(overlay):
    get_routes = {path for method, path in routes() if method == "GET"}
    assert {"/livez", "/readyz"} <= get_routes
    c = one(overlay, "Deployment", "cangrejo")["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    listen_port = int(container_env(overlay, c)["CANGREJO_LISTEN"].rsplit(":", 1)[1])
    assert port_names == {"http": listen_port}
    assert c["startupProbe"]["httpGet"]["path"] == "/livez"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] == "http"
        assert c[probe]["timeoutSeconds"] < c[probe]["periodSeconds"]
    # Startup may take a minute (connections, migrations by the Job) before liveness counts.
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_the_prestop_sleep_and_the_drain(overlay):
    pod = one(overlay, "Deployment", "cangrejo")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = container_env(overlay, c)
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "/bin/sleep" and len(pre_stop) == 2  # coreutils is in debian slim
    drain = (int(pre_stop[1]) + ms_to_s(env["CANGREJO_SHUTDOWN_DELAY_MS"]) +
             int(env["CANGREJO_SHUTDOWN_GRACE_SECONDS"]))
    grace = pod["terminationGracePeriodSeconds"]
    assert drain < grace <= drain + 10, (
        f"terminationGracePeriodSeconds {grace} should be a little over preStop "
        f"{pre_stop[1]} s + CANGREJO_SHUTDOWN_DELAY_MS + CANGREJO_SHUTDOWN_GRACE_SECONDS = {drain}")
    assert int(env["CANGREJO_SHUTDOWN_DELAY_MS"]) > 0, "keep accepting while endpoints update"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_meet_the_restricted_pod_security_standard(overlay):
    namespace = one(overlay, "Namespace")["metadata"]
    assert namespace["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    uid, gid = runtime_user()
    for oid, pod, _ in pod_templates(overlay):
        psc = pod.get("securityContext", {})
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        assert pod.get("automountServiceAccountToken") is False, oid
        for v in pod.get("volumes", []):
            assert set(v) - {"name"} <= RESTRICTED_VOLUME_TYPES, (oid, v)
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c.get("securityContext", {})
            where = f"{oid} container {c['name']}"
            assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, where
            assert (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") \
                == "RuntimeDefault", where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged") in (None, False), where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
            assert c["resources"]["requests"]["cpu"], where
    for oid, c, pod in cangrejo_containers(overlay):
        psc = pod["securityContext"]
        assert (psc["runAsUser"], psc["runAsGroup"]) == (uid, gid), \
            f"{oid}: run as the image's USER {uid}:{gid}"
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        tmp = next(v for v in pod["volumes"] if v["name"] == mounts["/tmp"]["name"])
        assert "emptyDir" in tmp, f"{oid}: /tmp is the one writable place"
        assert all(m.get("readOnly") for p, m in mounts.items() if p != "/tmp"), oid


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_database_urls_come_from_the_cloudnativepg_services(overlay):
    cluster = one(overlay, "Cluster")
    name, initdb = cluster["metadata"]["name"], cluster["spec"]["bootstrap"]["initdb"]
    for oid, c, pod in cangrejo_containers(overlay):
        env = container_env(overlay, c)
        primary = urllib.parse.urlsplit(env["DATABASE_URL"])
        replicas = [urllib.parse.urlsplit(u) for u in env["DATABASE_REPLICA_URLS"].split(",")]
        assert primary.hostname == f"{name}-rw", oid
        assert [r.hostname for r in replicas] == [f"{name}-ro"], oid
        for url in [primary] + replicas:
            assert url.scheme in ("postgresql", "postgres") and url.port == 5432
            assert url.username == initdb["owner"] and url.password is None, "no password in URLs"
            assert url.path == "/" + initdb["database"]
            query = urllib.parse.parse_qs(url.query)
            assert query["sslmode"] == ["verify-full"]
            ca = query["sslrootcert"][0]
            mount = next(m for m in c["volumeMounts"] if ca.startswith(m["mountPath"] + "/"))
            volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            assert volume["secret"]["secretName"] == f"{name}-ca"
            assert ca == f"{mount['mountPath']}/ca.crt"
        assert env["PGPASSWORD"] == ("secret", f"{name}-app", "password"), oid


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_connection_pools_fit_in_max_connections(overlay):
    env = container_env(overlay, one(overlay, "Deployment", "cangrejo")["spec"]["template"][
        "spec"]["containers"][0])
    pods = one(overlay, "HorizontalPodAutoscaler")["spec"]["maxReplicas"]
    max_connections = int(one(overlay, "Cluster")["spec"]["postgresql"]["parameters"][
        "max_connections"])
    # Per pod: the pool, plus a reprocess runner's session and a migration/retention run; and
    # PostgreSQL's reserved and the operator's connections.
    for pool in ("DB_POOL_SIZE", "DB_REPLICA_POOL_SIZE"):
        need = pods * (int(env[pool]) + 2) + 10
        assert need <= max_connections, f"{pool}: {need} connections > max_connections"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_between_objects_resolve(overlay):
    template = secret_template()
    cluster = one(overlay, "Cluster")["metadata"]["name"]
    secrets = {template["metadata"]["name"]: set(template["stringData"])}
    secrets.update({cluster + suffix: keys for suffix, keys in CNPG_SECRET_KEYS.items()})
    ingress = one(overlay, "Ingress")
    for tls in ingress["spec"]["tls"]:
        secrets[tls["secretName"]] = {"tls.crt", "tls.key"}
    configmaps = {o["metadata"]["name"]: set(o["data"]) for o in objects_of(overlay, "ConfigMap")}
    accounts = {o["metadata"]["name"] for o in objects_of(overlay, "ServiceAccount")}
    pods = list(pod_templates(overlay))
    for oid, pod, labels in pods:
        if "serviceAccountName" in pod:
            assert pod["serviceAccountName"] in accounts, oid
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, (oid, m)
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets.get(ref["name"], ()), (oid, ref)
            for source in c.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps, (oid, source)
        for v in volumes.values():
            if "secret" in v:
                keys = secrets.get(v["secret"]["secretName"])
                assert keys is not None, (oid, v)
                assert {i["key"] for i in v["secret"].get("items", [])} <= keys, (oid, v)
    # Selectors: each Service, PDB and NetworkPolicy selects pods that exist.
    for o in objects_of(overlay, "Service"):
        sel = o["spec"]["selector"]
        matched = [(oid, pod) for oid, pod, labels in pods if selector_matches(sel, labels)]
        assert matched, f"Service {o['metadata']['name']} selects no pod"
        for port in o["spec"]["ports"]:
            for oid, pod in matched:
                names = {p.get("name") for c in pod["containers"] for p in c.get("ports", [])}
                assert port["targetPort"] in names, (o["metadata"]["name"], port)
    for kind in ("PodDisruptionBudget", "Deployment"):
        for o in objects_of(overlay, kind):
            sel = o["spec"]["selector"]["matchLabels"]
            assert any(selector_matches(sel, labels) for _, _, labels in pods), o["metadata"]
    for o in objects_of(overlay, "NetworkPolicy"):
        sel = o["spec"]["podSelector"]["matchLabels"]
        if "cnpg.io/cluster" in sel:
            assert sel["cnpg.io/cluster"] == cluster
        else:
            assert any(selector_matches(sel, labels) for _, _, labels in pods), o["metadata"]
    # The Ingress reaches the Service's named port; the ServiceMonitor scrapes a Service port.
    services = {o["metadata"]["name"]: o for o in objects_of(overlay, "Service")}
    for rule in ingress["spec"]["rules"]:
        for p in rule["http"]["paths"]:
            svc = services[p["backend"]["service"]["name"]]
            assert p["backend"]["service"]["port"]["name"] in {x["name"] for x in
                                                               svc["spec"]["ports"]}
    monitor = one(overlay, "ServiceMonitor")["spec"]
    scraped = [s for s in services.values()
               if selector_matches(monitor["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert [s["metadata"]["name"] for s in scraped] == ["cangrejo"]
    assert {e["port"] for e in monitor["endpoints"]} <= {p["name"] for p in
                                                          scraped[0]["spec"]["ports"]}
    assert {e["path"] for e in monitor["endpoints"]} == {"/metrics"}
    # The rules' `up{job=...}` is the Service name (the Prometheus Operator's default job).
    for _, expr in rules_exprs():
        for name, matchers in promql_parts(expr)[0]:
            for label, op, value in matchers:
                if label == "job":
                    assert value == scraped[0]["metadata"]["name"], expr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ingress_is_tls_and_exposes_the_api_but_not_the_operations_routes(overlay):
    spec = one(overlay, "Ingress")["spec"]
    tls_hosts = {h for t in spec["tls"] for h in t["hosts"]}
    assert tls_hosts == {r["host"] for r in spec["rules"]}
    paths = [(p["path"], p["pathType"]) for r in spec["rules"] for p in r["http"]["paths"]]

    def exposed(route):
        return any(route == path if kind == "Exact" else
                   route == path or route.startswith(path.rstrip("/") + "/")
                   for path, kind in paths)

    for method, route in routes():
        if route in ("/livez", "/readyz", "/metrics"):
            assert not exposed(route), f"{route} must stay inside the cluster"
        else:
            assert exposed(route), f"{method} {route} is not routed by the Ingress"
    annotations = one(overlay, "Ingress")["metadata"]["annotations"]
    body = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert int(body.rstrip("m")) >= 32, "a 32 MiB order batch must get through"


# ---------------------------------------------------------------------------------------------
# configuration: names and values the server knows


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_environment_variable_is_one_the_server_knows(overlay):
    unknown = {}
    for oid, c, _ in cangrejo_containers(overlay):
        for name in container_env(overlay, c):
            if name not in known_env_vars():
                unknown.setdefault(oid, []).append(name)
    assert not unknown, f"variables `cangrejo help` does not list: {unknown}"
    # Secrets as files only where they are mounted: the Job and CronJob load the same
    # configuration and would stop at a missing *_FILE.
    for oid, c, _ in cangrejo_containers(overlay):
        mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
        for name, value in container_env(overlay, c).items():
            if name.endswith("_FILE"):
                assert any(value.startswith(m + "/") for m in mounts), (oid, name, value)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configuration_values_pass_the_servers_parser(overlay, server):
    """`cangrejo migrate` parses the whole configuration (numbers and ranges, listen address,
    log level) before it migrates: run it with the overlay's ConfigMap, pointed at the test
    database (already migrated: a no-op under the migration lock)."""
    c = one(overlay, "Deployment", "cangrejo")["spec"]["template"]["spec"]["containers"][0]
    env = {k: v for k, v in server.env.items() if k not in known_env_vars()}
    env.update({k: v for k, v in container_env(overlay, c).items() if isinstance(v, str)
                and not k.endswith("_FILE")})
    for k in ("DATABASE_URL", "DATABASE_REPLICA_URLS"):
        env[k] = server.env[k]
    proc = subprocess.run([server.binary, "migrate"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not sanitizer_reports(proc.stderr)


def test_secret_template_holds_placeholders_the_server_refuses(stack, tmp_path):
    secret = secret_template()
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == "cangrejo"
    data = secret["stringData"]
    with open(os.path.join(K8S, "base", "kustomization.yaml"), encoding="utf-8") as f:
        assert "secret.template.yaml" not in yaml.safe_load(f)["resources"]
    for key, value in data.items():
        assert key == "pii-master-key-id" or "REPLACE_ME" in value, f"{key}: a real value?"
    url = urllib.parse.urlsplit(data["redis-url"])
    assert url.password == data["redis-password"] and url.hostname == "cangrejo-redis"
    redis = one("prod", "Service", "cangrejo-redis")["spec"]["ports"][0]["port"]
    assert url.port == redis
    jwt_file, pii_file = tmp_path / "jwt", tmp_path / "pii"
    good_pii = tmp_path / "good-pii"
    good_pii.write_text(TEST_PII_MASTER_KEY + "\n")
    good_jwt = tmp_path / "good-jwt"
    good_jwt.write_text(TEST_SECRET + "\n")
    jwt_file.write_text(data["jwt-hs256-secret"])
    pii_file.write_text(data["pii-master-key"])
    base = {"PATH": os.environ.get("PATH", ""), "DATABASE_URL": stack.primary_url,
            "CANGREJO_LISTEN": f"127.0.0.1:{free_port()}", "PII_MASTER_KEY_ID": "k1",
            "ASAN_OPTIONS": "detect_leaks=0"}
    for jwt, pii, variable in [(jwt_file, good_pii, "JWT"), (good_jwt, pii_file, "PII")]:
        env = dict(base, JWT_HS256_SECRET_FILE=str(jwt), PII_MASTER_KEY_FILE=str(pii))
        proc = subprocess.run([server_binary(), "serve"], env=env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 2, f"serve ran with the template's {variable} placeholder"
        assert "configuration error" in proc.stderr and variable in proc.stderr, proc.stderr
        assert "REPLACE_ME" not in proc.stderr, "the message must not echo the secret"


# ---------------------------------------------------------------------------------------------
# Prometheus rules and Grafana


def test_rules_pass_promtool_check_and_unit_tests():
    check = subprocess.run(["promtool", "check", "rules", RULES], capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(["promtool", "test", "rules", "rules-test.yml"], cwd=TESTS_DEPLOY,
                          capture_output=True, text=True, timeout=60)
    assert unit.returncode == 0, unit.stdout + unit.stderr
    alerts = {r["alert"] for g in yaml.safe_load(open(RULES))["groups"] for r in g["rules"]}
    with open(os.path.join(TESTS_DEPLOY, "rules-test.yml"), encoding="utf-8") as f:
        tested = {a["alertname"] for t in yaml.safe_load(f)["tests"]
                  for a in t["alert_rule_test"] if a.get("exp_alerts")}
    assert alerts == tested, f"alerts without a firing test: {alerts - tested}"


def test_prometheusrule_mirrors_the_rules_file():
    proc = subprocess.run(["/usr/bin/python3", os.path.join(TESTS_DEPLOY,
                                                            "gen_prometheusrule.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    with open(PROMETHEUSRULE, encoding="utf-8") as f:
        rule = yaml.safe_load(f)
    with open(RULES, encoding="utf-8") as f:
        assert rule["spec"]["groups"] == yaml.safe_load(f)["groups"]
    for overlay in OVERLAYS:
        assert one(overlay, "PrometheusRule")["spec"]["groups"] == rule["spec"]["groups"]


def test_dashboard_queries_are_valid_promql(tmp_path):
    """promtool parses each dashboard query as a recording rule (Grafana's variables replaced
    by what they stand for)."""
    rules = []
    for i, (where, expr) in enumerate(dashboard_exprs()):
        expr = expr.replace("$__rate_interval", "1m").replace("$namespace", "cangrejo")
        assert "$" not in expr, f"{where}: unknown variable in {expr}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboard_structure_and_provisioning():
    d = dashboard()
    assert d["uid"] and d["title"] and d["schemaVersion"] >= 36
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = list(dashboard_panels())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"] and t["refId"] and t["datasource"] == p["datasource"]
            assert "$namespace" in t["expr"], f"{p['title']}: filter by the namespace variable"
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("requests", "latency", "5xx", "cache hit ratio", "pool", "replica lag",
                  "ingest", "freshness"):
        assert topic in titles, f"no panel about {topic}"
    with open(os.path.join(GRAFANA_PROVISIONING, "datasources", "cangrejo.yaml")) as f:
        ds = yaml.safe_load(f)
    assert ds["apiVersion"] == 1 and ds["datasources"][0]["type"] == "prometheus"
    with open(os.path.join(GRAFANA_PROVISIONING, "dashboards", "cangrejo.yaml")) as f:
        providers = yaml.safe_load(f)
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


@pytest.fixture(scope="module")
def exposition(server):
    """The running server's /metrics after a little traffic (series appear on first use)."""
    merchant = int(time.time() * 1000) % 10**9 + 8 * 10**11
    token = make_token(scope="merchants:admin orders:write metrics:read", merchants=[merchant])
    requests.get(server.url + "/livez", timeout=5)
    requests.get(server.url + "/readyz", timeout=5)
    requests.put(f"{server.url}/v1/merchants/{merchant}", headers=headers(token), timeout=10,
                 json={"name": "M", "timezone": "Europe/Madrid", "currency": "EUR"})
    for _ in range(2):
        requests.get(f"{server.url}/v1/merchants/{merchant}/metrics/sales", headers=headers(token),
                     params={"from": "2026-01-01", "to": "2026-01-02"}, timeout=10)
    text = requests.get(server.url + "/metrics", timeout=10).text
    return parse_exposition(text)


@pytest.mark.parametrize("name", metric_name_params())
def test_dashboard_and_rules_use_only_exported_metrics(name, exposition):
    families, samples = exposition
    uses = all_selectors()[name]
    if name in PROMETHEUS_SERIES:
        return
    assert exported(name, families, samples), \
        f"{name} (used by {sorted({w for w, _ in uses})}) is not on the server's /metrics"
    series = samples.get(name, [])
    labels = {k for s in series for k in s}
    if series:
        for where, matchers in uses:
            for label, op, value in matchers:
                if label in TARGET_LABELS:
                    continue
                assert label in labels, f"{where}: {name} has no label {label!r} ({labels})"
                if op == "=":
                    assert value in {s.get(label) for s in series}, \
                        f"{where}: {name} never has {label}={value!r}"


def test_grouping_labels_exist(exposition):
    families, samples = exposition
    for where, expr in dashboard_exprs() + rules_exprs():
        selectors, grouping = promql_parts(expr)
        labels = set(TARGET_LABELS)
        for name, _ in selectors:
            labels |= {k for s in samples.get(name, []) for k in s}
            if name.endswith("_bucket"):
                labels.add("le")
        missing = [g for g in grouping if g not in labels]
        if missing and all(n in MISSING_METRICS or n in PROMETHEUS_SERIES
                           for n, _ in selectors):
            continue
        assert not missing, f"{where}: grouping by {missing}, which no series of {expr!r} has"
    for name, label in template_queries():
        assert label in TARGET_LABELS or label in {k for s in samples.get(name, []) for k in s}


def test_promql_reader_finds_names_and_labels():
    selectors, grouping = promql_parts(
        'histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{route!~"/x|/y",'
        'status="2\\"00"}[5m]))) / on (pod) group_left(pool) b + sum without (x) (c) '
        '> bool 0.5 and {__name__="d", e="f"}')
    assert selectors == [("a_bucket", [("route", "!~", "/x|/y"), ("status", "=", '2"00')]),
                         ("b", []), ("c", []), ("d", [("e", "=", "f")])]
    assert grouping == ["le", "route", "pod", "pool", "x"]
