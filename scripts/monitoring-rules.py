#!/usr/bin/env python3
"""Writes manifests/monitoring/prometheusrule.yaml from manifests/monitoring/rules.yml.

rules.yml is the one source of the alert rules (promtool tests it); the PrometheusRule is
the same groups for the Prometheus Operator. The `monitoring` integration test fails when
the two differ. Needs PyYAML (Debian python3-yaml).
"""
import pathlib
import yaml

here = pathlib.Path(__file__).resolve().parent.parent / "manifests" / "monitoring"
HEADER = """\
# The alert rules of rules.yml for the Prometheus Operator (kube-prometheus-stack). Same
# groups, kept equal by a test: edit rules.yml, then regenerate this file with
#   python3 scripts/monitoring-rules.py
# kube-prometheus-stack selects rules by its release label by default: add it in your
# overlay (labels: {release: <your release>}) or set ruleSelectorNilUsesHelmValues=false.
"""


class Dumper(yaml.SafeDumper):
    pass


def text(dumper, s):
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)


Dumper.add_representer(str, text)
rules = yaml.safe_load((here / "rules.yml").read_text())
rule = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PrometheusRule",
    "metadata": {"name": "kube-dr", "labels": {"app.kubernetes.io/part-of": "kube-dr"}},
    "spec": {"groups": rules["groups"]},
}
(here / "prometheusrule.yaml").write_text(HEADER + yaml.dump(rule, Dumper=Dumper, sort_keys=False, width=200))
