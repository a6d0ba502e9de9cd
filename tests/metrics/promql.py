"""Just enough PromQL (and Grafana variable syntax) to list the metric names an expression uses,
and to read the sample names out of a /metrics exposition."""

from __future__ import annotations

import re

# PromQL functions and aggregation operators (Prometheus 2.42), called as `name(...)`.
FUNCTIONS = {
    # aggregations
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile",
    # functions
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "ceil",
    "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh", "day_of_month", "day_of_week",
    "day_of_year", "days_in_month", "deg", "delta", "deriv", "exp", "floor", "histogram_quantile",
    "holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace", "ln",
    "log10", "log2", "minute", "month", "pi", "predict_linear", "rad", "rate", "resets", "round",
    "scalar", "sgn", "sin", "sinh", "sort", "sort_desc", "sqrt", "tan", "tanh", "time",
    "timestamp", "vector", "year",
    "avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time",
    "quantile_over_time", "stddev_over_time", "stdvar_over_time", "last_over_time",
    "present_over_time",
}
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "atan2", "inf", "nan", "Inf", "NaN",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
# Grafana's template query functions: label_values(metric, label), metrics(regex), ...
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.+?)\s*,\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$")


class UnknownFunction(ValueError):
    pass


def metric_names(expr: str) -> set[str]:
    """Metric names selected by a PromQL expression (Grafana variables allowed)."""
    s = _STRING.sub('""', expr)
    s = _MATCHERS.sub("", s)  # after strings are gone, braces only delimit label matchers
    s = _RANGE.sub("", s)  # range selectors and subqueries: durations, $__rate_interval
    s = _GROUPING.sub("", s)  # label lists of by/without/on/ignoring/group_x
    names: set[str] = set()
    for m in _IDENT.finditer(s):
        tok, start = m.group(0), m.start()
        before = s[start - 1] if start else ""
        if before and (before.isdigit() or before in ".$"):  # 1e9, 0.5e3, 5m (offset), $variable
            continue
        if tok in KEYWORDS:
            continue
        if s[m.end():].lstrip().startswith("("):
            if tok not in FUNCTIONS:
                raise UnknownFunction(f"unknown PromQL function {tok!r} in {expr!r}")
            continue
        names.add(tok)
    return names


def template_query_metric_names(query: str) -> set[str]:
    """Metric names used by a Grafana Prometheus template variable query."""
    m = _LABEL_VALUES.match(query)
    if m:
        return metric_names(m.group(1)) if m.group(1) else set()
    m = re.match(r"^\s*query_result\((.*)\)\s*$", query, re.S)
    return metric_names(m.group(1) if m else query)


def parse_exposition(text: str) -> tuple[set[str], dict[str, str]]:
    """(sample names, {family name: type}) of a text exposition. A histogram family `x` has the
    samples x_bucket, x_sum and x_count, but no sample named x."""
    samples: set[str] = set()
    types: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "TYPE":
                types[parts[2]] = parts[3]
            continue
        m = _IDENT.match(line)
        if m:
            samples.add(m.group(0))
    return samples, types
