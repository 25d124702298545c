#!/usr/bin/env python3
"""Writes deploy/k8s/base/prometheusrule.yaml from deploy/prometheus/cangrejo-rules.yml.

The plain rules file is the source (promtool checks and tests it); the PrometheusRule for the
Prometheus Operator carries the same `groups:`, copied line by line (comments too) under
`spec:`. Run after editing the rules file:

    python3 tests/deploy/gen_prometheusrule.py           # rewrite the PrometheusRule
    python3 tests/deploy/gen_prometheusrule.py --check   # exit 1 if it is out of date
"""
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RULES = os.path.join(ROOT, "deploy", "prometheus", "cangrejo-rules.yml")
TARGET = os.path.join(ROOT, "deploy", "k8s", "base", "prometheusrule.yaml")

HEADER = """\
# GENERATED from deploy/prometheus/cangrejo-rules.yml by tests/deploy/gen_prometheusrule.py:
# edit that file, then run the script. The alert rules for the Prometheus Operator.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: cangrejo
  labels:
    app.kubernetes.io/name: cangrejo
    app.kubernetes.io/part-of: cangrejo
spec:
"""


def render():
    with open(RULES, encoding="utf-8") as f:
        lines = f.read().splitlines()
    start = lines.index("groups:")  # the header comment above it stays in the rules file
    body = ["  " + line if line.strip() else "" for line in lines[start:]]
    return HEADER + "\n".join(body) + "\n"


def main():
    text = render()
    if sys.argv[1:] == ["--check"]:
        with open(TARGET, encoding="utf-8") as f:
            if f.read() != text:
                print(f"{TARGET} is out of date: run python3 {sys.argv[0]}", file=sys.stderr)
                return 1
        return 0
    if sys.argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    with open(TARGET, "w", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
