#!/usr/bin/env python3
"""Adds up the unit (TAP, from meson's testlog.json) and integration (pytest JUnit XML) results
and prints the closing line "N passed, N failed"; exits non-zero when anything failed.

Usage: summarize.py TESTLOG_JSON JUNIT_XML UNIT_RC INTEGRATION_RC [BENCH_RC|skipped]
"""
import json
import re
import sys
import xml.etree.ElementTree as ET


def unit_counts(path):
    passed = failed = 0
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                entry = json.loads(line)
                out = entry.get("stdout") or ""
                ok = len(re.findall(r"^ok \d+", out, re.M))
                not_ok = len(re.findall(r"^not ok \d+", out, re.M))
                if entry.get("result") != "OK" and not_ok == 0:
                    not_ok = 1  # crashed or timed out before reporting a failed case
                passed += ok
                failed += not_ok
    except FileNotFoundError:
        failed += 1
    return passed, failed


def integration_counts(path):
    try:
        root = ET.parse(path).getroot()
    except (FileNotFoundError, ET.ParseError):
        return 0, 1, 0
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    return total - failed - skipped, failed, skipped


def main():
    testlog, junit, unit_rc, integration_rc = sys.argv[1:5]
    bench_rc = sys.argv[5] if len(sys.argv) > 5 else "skipped"
    u_pass, u_fail = unit_counts(testlog)
    i_pass, i_fail, i_skip = integration_counts(junit)
    if int(unit_rc) != 0 and u_fail == 0:
        u_fail = 1
    if int(integration_rc) != 0 and i_fail == 0:
        i_fail = 1
    print(f"unit: {u_pass} passed, {u_fail} failed")
    print(f"integration: {i_pass} passed, {i_fail} failed, {i_skip} skipped")
    passed, failed = u_pass + i_pass, u_fail + i_fail
    if bench_rc != "skipped":
        ok = int(bench_rc) == 0
        print(f"bench smoke: {int(ok)} passed, {int(not ok)} failed")
        passed, failed = passed + ok, failed + (not ok)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
