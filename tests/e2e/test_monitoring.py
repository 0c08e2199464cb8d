"""The alerting rules and the Grafana dashboard in packaging/ use only
metrics a running warren exposes: each expression is parsed out of the
files, and every metric name in it must be on /metrics."""
import json
import re

import yaml

from conftest import ROOT

RULES = ROOT / "packaging" / "prometheus" / "warren-alerts.yml"
DASHBOARD = ROOT / "packaging" / "grafana" / "warren-dashboard.json"
# What Prometheus appends to a family's name in its samples.
SUFFIXES = ("", "_total", "_bucket", "_sum", "_count", "_created")


def exposed(metrics_text):
    """Every name a query may use: sample names, and family names (from
    # TYPE lines) with their sample suffixes, so families without samples
    yet count too."""
    names = set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            family = line.split()[2]
            names.update(family + suffix for suffix in SUFFIXES)
        elif line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line)[0])
    return names


def used(expr):
    return set(re.findall(r"\bwarren_[a-z_]+", expr))


def rule_expressions():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    for rule in rules:
        assert set(rule) >= {"alert", "expr", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule
        assert rule["annotations"]["summary"], rule
    return {rule["alert"]: rule["expr"] for rule in rules}


def dashboard_expressions():
    dashboard = json.loads(DASHBOARD.read_text())
    return {f"{panel['title']} / {target['refId']}": target["expr"]
            for panel in dashboard["panels"] for target in panel["targets"]}


def test_rules_and_dashboard_use_only_exposed_metrics(warren):
    # Some traffic, so that labelled families have samples too.
    with warren.connect() as conn:
        ch = conn.channel()
        ch.basic_publish("", "test.monitoring.none", b"x")
        ch.close()
    metrics = exposed(warren.http_get("/metrics"))
    expressions = {**rule_expressions(), **dashboard_expressions()}
    assert len(expressions) > 15
    # The alerts the issue asks for are there.
    assert {"WarrenBrokerUnreachable", "WarrenPoolExhausted", "WarrenHeldPublishesNearBudget",
            "WarrenClientsRefused", "WarrenChannelReuseDropping"} <= set(rule_expressions())
    unknown = {name: sorted(used(expr) - metrics)
               for name, expr in expressions.items() if used(expr) - metrics}
    assert unknown == {}, unknown
    for name, expr in expressions.items():
        assert used(expr), f"{name} uses no warren metric"
        assert expr.count("(") == expr.count(")"), f"{name}: unbalanced parentheses"
