"""Call flows (``flows.toml``): the node graph each published number runs, and its static checks.

A flow is a set of named nodes and a start node. Nodes point at other nodes of the same flow by
id; ``goto`` and ``call`` reach other flows. ``madoguchi check`` proves that no caller can be
stranded: every node is reachable, every path reaches an end (hang-up, or a hand-off whose
failure path ends), no loop runs without the caller's input, every prompt exists in every
language, and sub-flows do not call themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .problems import REQUIRED, Problem, Reporter, read_toml, take
from .values import DIGITS, ID, LANG, PROMPT_ID

DTMF_KEYS = set("0123456789*#")

# kind -> {field: (type, default)}; node-reference fields are listed in REFS, prompts in PROMPTS.
KINDS: dict[str, dict[str, tuple]] = {
    "play": {"prompt": (str, REQUIRED), "interruptible": (bool, False), "next": (str, REQUIRED)},
    "menu": {"prompt": (str, REQUIRED), "options": (dict, REQUIRED), "timeout": (int, 5), "retries": (int, 2),
             "invalid_prompt": (str, None), "timeout_prompt": (str, None), "fallback": (str, REQUIRED)},
    "collect": {"prompt": (str, REQUIRED), "min_digits": (int, 1), "max_digits": (int, 1), "terminator": (str, "#"),
                "timeout": (int, 5), "retries": (int, 2), "invalid_prompt": (str, None), "var": (str, REQUIRED),
                "next": (str, REQUIRED), "fallback": (str, REQUIRED)},
    "language": {"prompt": (str, REQUIRED), "options": (dict, REQUIRED), "timeout": (int, 5), "retries": (int, 1),
                 "next": (str, REQUIRED)},
    "time": {"calendar": (str, "center"), "open": (str, REQUIRED), "closed": (str, REQUIRED)},
    "mode": {"normal": (str, REQUIRED), "disaster": (str, None)},
    "tag": {"tag": (str, REQUIRED), "next": (str, REQUIRED)},
    "queue": {"queue": (str, REQUIRED), "skills": (list, []), "next": (str, REQUIRED)},
    "transfer": {"entry": (str, REQUIRED), "next": (str, REQUIRED)},
    "speech": {"prompt": (str, REQUIRED), "phrases": (dict, REQUIRED), "timeout": (int, 5),
               "fallback": (str, REQUIRED), "dtmf": (str, REQUIRED)},
    "goto": {"flow": (str, REQUIRED)},
    "call": {"flow": (str, REQUIRED), "next": (str, REQUIRED)},
    "return": {},
    "hangup": {"prompt": (str, None)},
}
REFS = ("next", "fallback", "open", "closed", "normal", "disaster", "dtmf")
PROMPTS = ("prompt", "invalid_prompt", "timeout_prompt")
INPUT_KINDS = ("menu", "collect", "language", "speech")   # a loop through one of these waits for the caller


@dataclass(frozen=True)
class Node:
    id: str
    kind: str
    fields: dict = field(default_factory=dict, compare=False)   # validated values, by KINDS

    def __getattr__(self, name):
        try:
            return self.fields[name]
        except KeyError:
            raise AttributeError(name) from None

    def successors(self) -> list[str]:
        """Node ids of this flow reachable in one step."""
        out = [self.fields[k] for k in REFS if self.fields.get(k)]
        if self.kind in ("menu", "speech"):
            out += list(self.fields["options" if self.kind == "menu" else "phrases"].values())
        return out


@dataclass(frozen=True)
class Flow:
    id: str
    start: str
    nodes: dict[str, Node]


def load_flows(path, problems: list[Problem], *, languages, queues, directory, calendars, prompts) -> dict[str, Flow]:
    """Parse and check ``flows.toml``. ``prompts`` maps prompt id -> set of languages with text
    (None: prompts are not checked, e.g. when prompts.toml itself is broken)."""
    data, rep = read_toml(path, problems)
    if data is None:
        return {}
    top = take(rep, data, (), {"flows": (dict, REQUIRED)})
    flows: dict[str, Flow] = {}
    for fid, raw in (top["flows"] or {}).items():
        p = ("flows", fid)
        if not ID.match(fid):
            rep.add(p, "flow id must match [a-z][a-z0-9_-]{0,31}")
            continue
        f = take(rep, raw, p, {"start": (str, REQUIRED), "nodes": (dict, REQUIRED)})
        nodes = {}
        for nid, nraw in (f["nodes"] or {}).items():
            node = _node(rep, p + ("nodes", nid), nid, nraw, languages, queues, directory, calendars)
            if node is not None:
                nodes[nid] = node
        if f["start"] is not None and f["nodes"] is not None and f["start"] not in nodes:
            rep.add(p + ("start",), f"node {f['start']!r} is not defined in this flow")
            continue
        if f["start"] is not None:
            flows[fid] = Flow(fid, f["start"], nodes)
    for flow in flows.values():
        _check_flow(rep, flow, flows, languages, prompts)
    _check_calls(rep, flows)
    return flows


def _node(rep: Reporter, p: tuple, nid: str, raw, languages, queues, directory, calendars) -> Node | None:
    if not ID.match(nid):
        rep.add(p, "node id must match [a-z][a-z0-9_-]{0,31}")
        return None
    if not isinstance(raw, dict) or raw.get("kind") not in KINDS:
        rep.add(p + ("kind",), f"kind must be one of: {', '.join(KINDS)}")
        return None
    body = {k: v for k, v in raw.items() if k != "kind"}
    v = take(rep, body, p, KINDS[raw["kind"]])
    before = len(rep.sink)
    kind = raw["kind"]
    for k in PROMPTS:
        if v.get(k) is not None and not PROMPT_ID.match(v[k]):
            rep.add(p + (k,), "must be a prompt id like 'main-menu'")
    for k in ("timeout",):
        if v.get(k) is not None and not 1 <= v[k] <= 60:
            rep.add(p + (k,), "must be 1-60 seconds")
    if v.get("retries") is not None and not 0 <= v["retries"] <= 9:
        rep.add(p + ("retries",), "must be 0-9")
    if kind in ("menu", "language") and v["options"] is not None:
        if not v["options"]:
            rep.add(p + ("options",), "needs at least one option")
        for key, target in v["options"].items():
            if key not in DTMF_KEYS:
                rep.add(p + ("options", key), "option keys are single DTMF keys 0-9 * #")
            if not isinstance(target, str):
                rep.add(p + ("options", key), "must be a string")
            elif kind == "language" and target not in languages:
                rep.add(p + ("options", key), f"language {target!r} is not in site.languages")
    if kind == "speech" and v["phrases"] is not None:
        if not v["phrases"]:
            rep.add(p + ("phrases",), "needs at least one phrase")
        for phrase, target in v["phrases"].items():
            if not isinstance(target, str):
                rep.add(p + ("phrases", phrase), "must be a node id")
    if kind == "collect":
        if v["min_digits"] is not None and v["max_digits"] is not None and \
                not 1 <= v["min_digits"] <= v["max_digits"] <= 32:
            rep.add(p + ("max_digits",), "need 1 <= min_digits <= max_digits <= 32")
        if v["terminator"] is not None and v["terminator"] not in ("", "#", "*"):
            rep.add(p + ("terminator",), "must be '#', '*' or ''")
        if v["var"] is not None and not ID.match(v["var"]):
            rep.add(p + ("var",), "must be an id")
    if kind == "queue":
        for s in v["skills"] or []:
            if not ID.match(s):
                rep.add(p + ("skills",), f"{s!r} is not a skill id", value=s)
    if kind == "tag" and v["tag"] is not None and not ID.match(v["tag"]):
        rep.add(p + ("tag",), "must be an id")
    if len(rep.sink) > before or any(v[k] is None for k, (_, d) in KINDS[kind].items() if d is REQUIRED):
        return None
    # references to other files: reported, but the node stays so the graph checks still run
    if kind == "time" and v["calendar"] not in calendars:
        rep.add(p + ("calendar",), f"calendar {v['calendar']!r} is not defined in calendar.toml")
    if kind == "queue" and v["queue"] not in queues:
        rep.add(p + ("queue",), f"queue {v['queue']!r} is not defined in queues.toml")
    if kind == "transfer" and v["entry"] not in directory:
        rep.add(p + ("entry",), f"directory entry {v['entry']!r} is not defined in directory.csv")
    return Node(nid, kind, v)


def _check_flow(rep: Reporter, flow: Flow, flows: dict[str, Flow], languages, prompts) -> None:
    p = ("flows", flow.id)
    for node in flow.nodes.values():
        np = p + ("nodes", node.id)
        for k in REFS:
            if node.fields.get(k) and node.fields[k] not in flow.nodes:
                rep.add(np + (k,), f"node {node.fields[k]!r} is not defined in flow {flow.id!r}")
        if node.kind in ("menu", "speech"):
            key = "options" if node.kind == "menu" else "phrases"
            for opt, target in node.fields[key].items():
                if target not in flow.nodes:
                    rep.add(np + (key, opt), f"node {target!r} is not defined in flow {flow.id!r}")
        if node.kind in ("goto", "call") and node.flow not in flows:
            rep.add(np + ("flow",), f"flow {node.flow!r} is not defined")
        if prompts is not None:
            for k in PROMPTS:
                pid = node.fields.get(k)
                if pid is None:
                    continue
                missing = [lang for lang in languages if lang not in prompts.get(pid, ())]
                if pid not in prompts:
                    rep.add(np + (k,), f"prompt {pid!r} is not defined in prompts.toml")
                elif missing:
                    rep.add(np + (k,), f"prompt {pid!r} has no text in {', '.join(missing)}")
    graph = {n.id: [s for s in n.successors() if s in flow.nodes] for n in flow.nodes.values()}
    # unreachable nodes
    seen, todo = set(), [flow.start]
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo += graph[n]
    for n in flow.nodes:
        if n not in seen:
            rep.add(p + ("nodes", n), f"node {n!r} cannot be reached from start {flow.start!r}")
    # every node must reach an end; an end is hangup/goto/return (a sub-flow's end) or a hand-off
    ends = {n.id for n in flow.nodes.values() if n.kind in ("hangup", "goto", "return")}
    reaches_end = set(ends)
    changed = True
    while changed:
        changed = False
        for n, succ in graph.items():
            if n not in reaches_end and any(s in reaches_end for s in succ):
                reaches_end.add(n)
                changed = True
    for n in seen - reaches_end:
        rep.add(p + ("nodes", n), "loop without exit: no path from here ends the call")
    # loops the caller cannot leave by pressing a key: cycles through no input node
    passive = {n for n, node in flow.nodes.items() if node.kind not in INPUT_KINDS}
    for cycle_node in _cycles(graph, passive):
        rep.add(p + ("nodes", cycle_node), "loop without input: these nodes would repeat forever")


def _cycles(graph: dict[str, list[str]], allowed: set[str]) -> list[str]:
    """One node from each cycle that uses only ``allowed`` nodes (Tarjan's SCC)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in allowed:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                out.append(sorted(comp)[0])
    for v in graph:
        if v in allowed and v not in index:
            strong(v)
    return out


def _check_calls(rep: Reporter, flows: dict[str, Flow]) -> None:
    """A sub-flow must not call itself, directly or through others; 'return' only in sub-flows."""
    calls = {f.id: {n.flow for n in f.nodes.values() if n.kind == "call" and n.flow in flows} for f in flows.values()}
    called = set().union(*calls.values()) if calls else set()
    for f in flows.values():
        seen, todo = set(), list(calls[f.id])
        while todo:
            g = todo.pop()
            if g == f.id:
                rep.add(("flows", f.id), "calls itself (directly or through another flow)")
                break
            if g not in seen:
                seen.add(g)
                todo += calls[g]
        if f.id not in called:
            for n in f.nodes.values():
                if n.kind == "return":
                    rep.add(("flows", f.id, "nodes", n.id), "'return' outside a called sub-flow ends nothing")
