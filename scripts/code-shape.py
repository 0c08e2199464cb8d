#!/usr/bin/env python3
"""Prints the shape of warren's source: lines per file, the longest
functions, and cycles between modules.

    scripts/code-shape.py [--check] [DIR ...]   (default: src, warren-bench/src)

With --check it exits 1 when a file is over MAX_FILE_LINES, a function over
MAX_FN_LINES, or two modules import each other (directly or around a loop):
the limits that keep each file one idea a newcomer can read. Test modules
(`mod tests` blocks, and `tests.rs` files beside the module they test)
count towards neither limit: tables of cases are long by nature.
"""
import re
import sys
from pathlib import Path

MAX_FILE_LINES = 600
MAX_FN_LINES = 80

FN_RE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?fn\s+(\w+)")
TESTS_RE = re.compile(r"^\s*mod tests\s*\{")


def strip_code(line):
    """The line without string and char literals or a trailing comment, so
    that braces inside them do not count."""
    line = re.sub(r'"(?:\\.|[^"\\])*"', '""', line)
    line = re.sub(r"'(?:\\.|[^'\\])'", "''", line)
    return line.split("//", 1)[0]


def code_lines(path):
    """Lines outside `mod tests { ... }`, with their 1-based numbers."""
    out, depth, in_tests = [], 0, False
    for no, raw in enumerate(path.read_text().splitlines(), 1):
        line = strip_code(raw)
        if not in_tests and TESTS_RE.match(line):
            in_tests, depth = True, 0
        if in_tests:
            depth += line.count("{") - line.count("}")
            if depth <= 0 and "}" in line:
                in_tests = False
            continue
        out.append((no, raw, line))
    return out


def functions(lines):
    """(name, first line, length) for every fn with a body."""
    found = []
    for i, (no, _raw, line) in enumerate(lines):
        m = FN_RE.match(line)
        if not m:
            continue
        depth, opened = 0, False
        for no2, _r, l2 in lines[i:]:
            if not opened and ";" in l2 and "{" not in l2:
                break
            depth += l2.count("{") - l2.count("}")
            opened = opened or "{" in l2
            if opened and depth <= 0:
                found.append((m.group(1), no, no2 - no + 1))
                break
    return found


def module_of(src, path):
    rel = path.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return "::".join(parts)


def expand_uses(text):
    """Every crate-relative path named in the text, `use` groups expanded."""
    paths = set()
    for m in re.finditer(r"\b(crate|super)::((?:\w+::)*)(\{[^;]*?\}|\w+)", text):
        head, mid, tail = m.group(1), m.group(2), m.group(3)
        if tail.startswith("{"):
            for item in re.split(r",", tail[1:-1]):
                item = item.strip().split(" as ")[0].strip("{} ")
                if item:
                    paths.add(f"{head}::{mid}{item.split('::{')[0]}")
        else:
            paths.add(f"{head}::{mid}{tail}")
    return paths


def resolve(path, here, modules):
    parts = path.split("::")
    if parts[0] == "super":
        base = here.split("::")[:-1] if here else []
        parts = base + parts[1:]
    else:
        parts = parts[1:]
    for n in range(len(parts), 0, -1):
        cand = "::".join(parts[:n])
        if cand in modules:
            return cand
    return None


def cycles(graph):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def top_module(mod):
    return mod.split("::")[0]


def main(argv):
    check = "--check" in argv
    repo = Path(__file__).resolve().parent.parent
    roots = [Path(a) for a in argv if a != "--check"] or [repo / "src", repo / "warren-bench" / "src"]
    failures = []
    for src in roots:
        files = sorted(p for p in src.rglob("*.rs") if p.name != "tests.rs")
        modules = {module_of(src, p): p for p in files}
        graph, fns, sizes = {}, [], []
        for mod, path in modules.items():
            lines = code_lines(path)
            sizes.append((len(lines), path))
            fns += [(n, path, no, length) for n, no, length in functions(lines)]
            text = "\n".join(l for _no, _r, l in lines)
            deps = {resolve(p, mod, modules) for p in expand_uses(text)}
            graph[mod] = {d for d in deps if d is not None and d != mod and not mod.startswith(d + "::") and d != ""}
        print(f"{src}: {len(files)} files, {sum(s for s, _ in sizes)} lines outside tests")
        for size, path in sorted(sizes, reverse=True)[:12]:
            print(f"  {size:5} {path.relative_to(src)}")
            if size > MAX_FILE_LINES:
                failures.append(f"{path}: {size} lines (limit {MAX_FILE_LINES})")
        print("  longest functions:")
        for name, path, no, length in sorted(fns, key=lambda f: -f[3])[:12]:
            print(f"  {length:5} {path.relative_to(src)}:{no} {name}")
        for name, path, no, length in fns:
            if length > MAX_FN_LINES:
                failures.append(f"{path}:{no}: fn {name} is {length} lines (limit {MAX_FN_LINES})")
        # Cycles between top-level modules: a submodule importing its own
        # parent is how Rust modules share private items, not a cycle.
        top = {}
        for mod, deps in graph.items():
            for d in deps:
                a, b = top_module(mod), top_module(d)
                if a != b:
                    top.setdefault(a, set()).add(b)
        found = cycles(top)
        print(f"  module cycles: {len(found)}")
        for comp in found:
            print("    " + " <-> ".join(comp))
            failures.append("import cycle: " + " <-> ".join(comp))
    if check and failures:
        print("\n".join(["code-shape: over the limits:"] + ["  " + f for f in failures]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
