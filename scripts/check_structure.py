#!/usr/bin/env python3
"""Structural bars of the code base, checked on every test run:

- no function in `trainer/` or `src/train/` longer than 80 lines;
- no `.rs` file longer than 600 lines, and no line wider than rustfmt's 120 columns (rustfmt
  leaves long strings and comments alone);
- no import cycle between the files of a crate (a `use` of an item resolves to the file
  that defines it, so a parent module re-exporting its children is no cycle).

Prints every violation and exits 1 if there is one.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FN_LINES = 80
MAX_FILE_LINES = 600
MAX_WIDTH = 120
FN_DIRS = ["trainer/src", "src/train"]
CRATES = {"crate": ROOT / "src", "trainer": ROOT / "trainer/src", "viewer": ROOT / "viewer/src"}

FN_START = re.compile(r"^(\s*)(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")
DEFINES = re.compile(r"^\s*pub(\([^)]*\))?\s+(async\s+)?(struct|enum|fn|trait|type|const|static|mod)\s+(\w+)")


def rust_files():
    for path in sorted(ROOT.glob("**/*.rs")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("target", "www") or "pkg" in rel.parts:
            continue
        yield path


def long_functions(path):
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        m = FN_START.match(line)
        if not m or line.rstrip().endswith(";"):
            continue
        indent = m.group(1)
        for j in range(i + 1, len(lines)):
            if lines[j] == indent + "}":
                if j - i + 1 > MAX_FN_LINES:
                    yield m.group(7), i + 1, j - i + 1
                break


def module_files(crate_root):
    """Module path (tuple) -> file, for every file of a crate."""
    files = {}
    for path in crate_root.glob("**/*.rs"):
        rel = path.relative_to(crate_root).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] in ("mod", "lib", "main"):
            parts = parts[:-1]
        files[tuple(parts)] = path
    return files


def definer(files, module, name):
    """The file of `module` (or of one of its children) that defines `name`."""
    candidates = [p for m, p in files.items() if m[: len(module)] == module and len(m) <= len(module) + 1]
    for path in sorted(candidates, key=lambda p: len(str(p))):
        for line in path.read_text().splitlines():
            m = DEFINES.match(line)
            if m and m.group(4) == name:
                return path
    return files.get(module)


def imports(crate, crate_root, files):
    """Edges file -> file from `use crate::…`, `use super::…` and `crate::…` paths in code."""
    by_file = {p: m for m, p in files.items()}
    edges = {}
    for path, module in by_file.items():
        text = path.read_text()
        text = text.split("#[cfg(test)]\nmod tests")[0]
        is_mod = path.name in ("mod.rs", "lib.rs", "main.rs")
        targets, uses = set(), []
        for use in re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", text, re.M):
            items = split_group(re.sub(r"\s+as\s+\w+", "", use).replace(" ", "").replace("\n", ""))
            uses.extend(items)
        # Paths written out in the code (`crate::bench::time_samples(…)`) are imports too.
        code = "\n".join(l for l in text.splitlines() if not l.lstrip().startswith("//"))
        uses.extend(re.findall(r"\bcrate(?:::\w+)+", code))
        for item in uses:
            parts = [p for p in item.split("::") if p not in ("self", "*")]
            if parts[0] == "crate":
                base, parts = [], parts[1:]
            elif parts[0] == "super":
                ups = 0
                while parts and parts[0] == "super":
                    parts, ups = parts[1:], ups + 1
                base = list(module[: len(module) - ups])
            else:
                continue
            path_parts = base + parts
            for cut in range(len(path_parts), 0, -1):
                mod = tuple(path_parts[:cut])
                if mod in files:
                    name = path_parts[cut] if cut < len(path_parts) else None
                    target = definer(files, mod, name) if name else files[mod]
                    if target and target != path:
                        targets.add(target)
                    break
        # A parent module's own declarations of its children are not imports.
        edges[path] = {t for t in targets if not (is_mod and t.parent == path.parent)}
    return edges


def split_group(text):
    """The paths of a `use` tree such as `a::{b, c::{d, e}}` (renames already removed)."""
    depth, out, cur = 0, [], ""
    for ch in text + ",":
        depth += (ch == "{") - (ch == "}")
        if ch == "," and depth == 0:
            if cur:
                out.append(cur)
            cur = ""
        else:
            cur += ch
    flat = []
    for item in out:
        head, _, tail = item.partition("::{")
        flat.extend([head] if not tail else [head + "::" + t for t in split_group(tail[:-1])])
    return flat


def cycles(edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def main():
    problems = []
    for path in rust_files():
        rel = path.relative_to(ROOT)
        count = len(path.read_text().splitlines())
        if count > MAX_FILE_LINES:
            problems.append(f"{rel}: {count} lines (at most {MAX_FILE_LINES}); split it")
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if len(line) > MAX_WIDTH:
                problems.append(f"{rel}:{number}: {len(line)} columns (at most {MAX_WIDTH})")
        if any(str(rel).startswith(d + "/") for d in FN_DIRS):
            for name, line, length in long_functions(path):
                problems.append(f"{rel}:{line}: fn {name} is {length} lines (at most {MAX_FN_LINES})")
    for crate, root in CRATES.items():
        files = module_files(root)
        for component in cycles(imports(crate, root, files)):
            names = " -> ".join(str(p.relative_to(ROOT)) for p in sorted(component))
            problems.append(f"import cycle: {names}")
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} structural problems", file=sys.stderr)
        sys.exit(1)
    print("structure: functions, files, line widths and imports within bounds")


if __name__ == "__main__":
    main()
