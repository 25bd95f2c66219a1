"""Every PromQL expression of the dashboards and the alert rules, and what evaluating one outside Grafana needs.

- ``dashboard_queries`` / ``rule_queries``: each panel target's and each rule's expression, named by its source.
- ``substitute``: Grafana's variables replaced (``$__rate_interval`` and the dashboard's template variables).
- ``selectors``: the series selectors an expression reads (metric name, label matchers), and ``grouping_labels``
  the labels of its ``by``/``without``/``on``/``ignoring``/``group_*`` clauses.
- ``signals``: the operands of an alert's top-level ``and``/``or``/``unless``, each with its comparison made
  ``bool`` (``x > 0.05`` becomes ``x > bool 0.05``), so that evaluating one returns every series the comparison
  looked at, 0 or 1, instead of only those over the threshold: data means the series exist and the joins match.

The tokenizer knows the PromQL these files use (selectors, strings, durations, numbers, operators, keywords); it is
not a full parser.
"""

import itertools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

MONITORING_DIR = Path(__file__).resolve().parent
DASHBOARDS_DIR = MONITORING_DIR / "grafana" / "dashboards"
PROMETHEUS_DIR = MONITORING_DIR / "prometheus"
ALERTS_FILE = PROMETHEUS_DIR / "alerts.yml"

RATE_INTERVAL = "$__rate_interval"
# What a multi-value variable's "All" stands for in these dashboards (each variable's allValue).
ALL = ".*"

_AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile"}
)
_LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_KEYWORDS = _AGGREGATIONS | _LABEL_LIST_KEYWORDS | {"and", "or", "unless", "bool", "offset", "inf", "nan"}
_SET_OPERATORS = frozenset({"and", "or", "unless"})
_COMPARISONS = frozenset({"==", "!=", ">", "<", ">=", "<="})

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    |(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    |(?P<range>\[[^\]]*\])
    |(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?)
    |(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)
    |(?P<operator>==|!=|>=|<=|=~|!~|[-+*/%^<>=(),{}])
    """,
    re.VERBOSE,
)
_MATCHER = re.compile(r"""\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')\s*,?""")


class PromQLSyntaxError(ValueError):
    """An expression the tokenizer cannot read."""


@dataclass(frozen=True, slots=True)
class Query:
    source: str
    """The file it comes from (relative to monitoring/)."""
    title: str
    """The panel title and target refId, or the rule's alert or record name."""
    expr: str
    legend: str = ""


@dataclass(frozen=True, slots=True)
class Matcher:
    label: str
    operator: str
    value: str


@dataclass(frozen=True, slots=True)
class Selector:
    metric: str
    matchers: tuple[Matcher, ...]

    @property
    def text(self) -> str:
        """The selector as PromQL (an instant selector: any range dropped)."""
        inside = ", ".join(f"{m.label}{m.operator}{json.dumps(m.value)}" for m in self.matchers)
        return f"{self.metric}{{{inside}}}" if inside else self.metric


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    start: int
    end: int


def _tokens(expr: str) -> list[_Token]:
    tokens = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise PromQLSyntaxError(f"cannot read {expr[position : position + 20]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            tokens.append(_Token(kind, match.group(), match.start(), match.end()))
        position = match.end()
    return tokens


def _closing(tokens: list[_Token], index: int, opening: str, closing: str) -> int:
    """The index of the token closing the bracket opened at ``index``."""
    depth = 0
    for position in range(index, len(tokens)):
        if tokens[position].text == opening:
            depth += 1
        elif tokens[position].text == closing:
            depth -= 1
            if depth == 0:
                return position
    raise PromQLSyntaxError(f"unbalanced {opening!r}")


def _matchers(expr: str, tokens: list[_Token], opening: int, closing: int) -> tuple[Matcher, ...]:
    inside = expr[tokens[opening].end : tokens[closing].start]
    matchers = []
    position = 0
    while inside[position:].strip():
        match = _MATCHER.match(inside, position)
        if match is None:
            raise PromQLSyntaxError(f"cannot read the matchers {{{inside}}}")
        label, operator, quoted = match.groups()
        value = json.loads(quoted) if quoted.startswith('"') else quoted[1:-1]
        matchers.append(Matcher(label, operator, value))
        position = match.end()
    return tuple(matchers)


def _walk(expr: str) -> tuple[list[Selector], set[str]]:
    tokens = _tokens(expr)
    selectors: list[Selector] = []
    grouping: set[str] = set()
    index = 0
    while index < len(tokens):
        token = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if token.kind == "name" and token.text in _LABEL_LIST_KEYWORDS:
            if following is not None and following.text == "(":
                closing = _closing(tokens, index + 1, "(", ")")
                grouping.update(each.text for each in tokens[index + 2 : closing] if each.kind == "name")
                index = closing
        elif token.kind == "name" and token.text not in _KEYWORDS and (following is None or following.text != "("):
            matchers: tuple[Matcher, ...] = ()
            if following is not None and following.text == "{":
                closing = _closing(tokens, index + 1, "{", "}")
                matchers = _matchers(expr, tokens, index + 1, closing)
                index = closing
            selectors.append(Selector(token.text, matchers))
        elif token.text == "{":
            raise PromQLSyntaxError(f"a selector without a metric name in {expr!r}")
        index += 1
    return selectors, grouping


def selectors(expr: str) -> list[Selector]:
    """The series selectors ``expr`` reads, in order."""
    return _walk(expr)[0]


def grouping_labels(expr: str) -> set[str]:
    """The labels named in ``expr``'s by, without, on, ignoring and group_left/group_right clauses."""
    return _walk(expr)[1]


def _top_level(tokens: list[_Token]) -> Iterator[tuple[int, _Token]]:
    depth = 0
    for index, token in enumerate(tokens):
        if token.text in "({":
            depth += 1
        elif token.text in ")}":
            depth -= 1
        elif depth == 0:
            yield index, token


def _unwrapped(expr: str) -> str:
    """``expr`` without parentheses around the whole of it."""
    expr = expr.strip()
    while expr.startswith("("):
        tokens = _tokens(expr)
        if _closing(tokens, 0, "(", ")") != len(tokens) - 1:
            break
        expr = expr[1:-1].strip()
    return expr


def _without_leading_modifier(expr: str) -> str:
    """A set operator's right operand without the operator's ``on (...)``/``ignoring (...)``."""
    tokens = _tokens(expr)
    if tokens and tokens[0].text in {"on", "ignoring"} and len(tokens) > 1 and tokens[1].text == "(":
        return expr[tokens[_closing(tokens, 1, "(", ")")].end :].strip()
    return expr


def signals(expr: str) -> list[str]:
    """The operands of ``expr``'s top-level and/or/unless, each with its top-level comparison made ``bool``."""
    expr = _unwrapped(expr)
    tokens = _tokens(expr)
    cuts = [index for index, token in _top_level(tokens) if token.kind == "name" and token.text in _SET_OPERATORS]
    if cuts:
        bounds = [0, *(tokens[cut].start for cut in cuts), len(expr)]
        parts = []
        for number, (start, end) in enumerate(itertools.pairwise(bounds)):
            part = expr[start:end]
            if number > 0:
                part = _without_leading_modifier(part.split(None, 1)[1])
            parts.extend(signals(part))
        return parts
    for index, token in _top_level(tokens):
        if token.text in _COMPARISONS:
            following = tokens[index + 1] if index + 1 < len(tokens) else None
            if following is not None and following.text == "bool":
                return [expr]
            return [f"{expr[: token.end]} bool{expr[token.end :]}"]
    return [expr]


def substitute(expr: str, variables: Mapping[str, str], rate_interval: str) -> str:
    """``expr`` with ``$__rate_interval`` and each ``$name``/``${name}`` of ``variables`` replaced."""
    expr = expr.replace(RATE_INTERVAL, rate_interval).replace("${__rate_interval}", rate_interval)
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", variables[name]).replace(f"${name}", variables[name])
    if "$" in expr:
        raise PromQLSyntaxError(f"a variable is left in {expr!r}")
    return expr


def load_dashboard(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return document


def dashboard_files(folder: Path = DASHBOARDS_DIR) -> list[Path]:
    return sorted(folder.glob("*.json"))


def panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The dashboard's panels with queries, rows' nested panels included, in layout order."""
    found: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        found.extend(panel.get("panels", []))
        if panel.get("targets"):
            found.append(panel)
    return found


def variables(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """Each template variable with its "All" value (what the dashboard shows when nothing is selected)."""
    return {each["name"]: each.get("allValue") or ALL for each in dashboard.get("templating", {}).get("list", [])}


def dashboard_queries(folder: Path = DASHBOARDS_DIR) -> list[Query]:
    queries = []
    for path in dashboard_files(folder):
        for panel in panels(load_dashboard(path)):
            for target in panel["targets"]:
                source = path.relative_to(MONITORING_DIR).as_posix()
                title = f"{panel['title']} [{target['refId']}]"
                queries.append(Query(source, title, target["expr"], target.get("legendFormat", "")))
    return queries


def rule_queries(path: Path = ALERTS_FILE) -> list[Query]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    source = path.relative_to(MONITORING_DIR).as_posix()
    return [
        Query(source, rule.get("alert") or rule["record"], " ".join(rule["expr"].split()))
        for group in document["groups"]
        for rule in group["rules"]
    ]
