"""test_fuzz.py - runs every libFuzzer target of tests/fuzz for FUZZ_SECONDS (default 60) on a
copy of its seed corpus, two at a time (FUZZ_WORKERS), and fails with the crashing input and
the sanitizer's report when a target finds anything.

    /usr/bin/python3 -m pytest tests/fuzz -q                 # the CI stage
    FUZZ_SECONDS=10 /usr/bin/python3 -m pytest tests/fuzz -q -k jwt

A session fixture builds build-fuzz (FUZZ_BUILD; meson setup with clang when missing, then
ninja) and starts the selected targets at once in a pool; each test waits for its own. The
committed corpus is never written to: new inputs stay in pytest's temporary directory, and
whatever a target finds goes to build-fuzz/fuzz-artifacts/<target>/.
"""
import concurrent.futures
import os
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = ROOT / "tests" / "fuzz"
TARGETS = ["order", "batch", "delivery", "jwt", "http"]
BUILD = ROOT / os.environ.get("FUZZ_BUILD", "build-fuzz")
SECONDS = int(os.environ.get("FUZZ_SECONDS", "60"))
WORKERS = int(os.environ.get("FUZZ_WORKERS", "2"))
# UBSan only reports and goes on unless told to stop: a report must be a finding.
SANITIZER_ENV = {
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
    "ASAN_OPTIONS": "abort_on_error=0:detect_leaks=1",
}
FINDINGS = ("crash-", "leak-", "timeout-", "oom-", "slow-unit-")


def build_fuzzers():
    if not (BUILD / "build.ninja").exists():
        subprocess.run(
            ["meson", "setup", str(BUILD), "-Dfuzz=true", "-Db_sanitize=address,undefined",
             "-Db_lundef=false", "-Dbuildtype=debugoptimized"],
            cwd=ROOT, env=dict(os.environ, CC="clang"), check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["ninja", "-C", str(BUILD)] + ["tests/fuzz/fuzz_" + t for t in TARGETS],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def run_target(target, work_corpus):
    """Fuzzes one target; returns (exit status, log path, finding paths)."""
    artifacts = BUILD / "fuzz-artifacts" / target
    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.mkdir(parents=True)
    log = artifacts / "fuzz.log"
    cmd = [str(BUILD / "tests" / "fuzz" / ("fuzz_" + target)),
           "-max_total_time=%d" % SECONDS, "-timeout=30", "-rss_limit_mb=2048",
           "-print_final_stats=1", "-artifact_prefix=%s/" % artifacts, str(work_corpus)]
    with open(log, "wb") as out:
        try:
            status = subprocess.run(cmd, cwd=artifacts, stdout=out, stderr=subprocess.STDOUT,
                                    env=dict(os.environ, **SANITIZER_ENV),
                                    timeout=SECONDS + 120).returncode
        except subprocess.TimeoutExpired:
            status = "still running %d s after -max_total_time" % 120
    found = sorted(p for p in artifacts.iterdir() if p.name.startswith(FINDINGS))
    return status, log, found


def selected_targets(session):
    return sorted({item.callspec.params["target"] for item in session.items
                   if getattr(item, "callspec", None) and item.module.__name__ == __name__
                   and "target" in item.callspec.params})


@pytest.fixture(scope="session")
def fuzz_runs(request, tmp_path_factory):
    build_fuzzers()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS)
    runs = {}
    for target in selected_targets(request.session):
        work = tmp_path_factory.mktemp("corpus-" + target)
        shutil.copytree(HERE / "corpus" / target, work, dirs_exist_ok=True)
        runs[target] = pool.submit(run_target, target, work)
    yield runs
    pool.shutdown(wait=True)


def report(log):
    """The target's and the sanitizer's report: the log without libFuzzer's progress lines."""
    noise = re.compile(r"^(#\d+\s|INFO:|\s+NEW_FUNC|\"|###### |MS: |0x[0-9a-f]{2},|stat::)")
    lines = [l for l in log.read_text(errors="replace").splitlines() if not noise.match(l)]
    return "\n".join(lines[-80:])


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_finds_nothing(target, fuzz_runs):
    status, log, found = fuzz_runs[target].result()
    if status != 0 or found:
        pytest.fail("fuzz_%s exited with %s; input(s): %s\nlog: %s\n%s" % (
            target, status, ", ".join(map(str, found)) or "none written", log, report(log)),
            pytrace=False)
