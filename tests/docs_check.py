#!/usr/bin/env python3
"""Checks that the documentation covers what the code reads and emits.

(a) Every environment variable the code reads has a row of its own in
    docs/configuration.md: its name, in backticks, in the first cell of a table row.
    Read from the source (test code left out):
      - every ALL_CAPS_WITH_UNDERSCORE string literal in src/config/ (the configuration
        reads its variables through a lookup closure, `get("NAME")`, and names them in
        its problems; `ssm.rs` lists the `*_PARAMETER` variables);
      - `std::env::var("NAME")` / `env::var_os("NAME")` anywhere in src/;
      - `get("NAME")` / `lookup("NAME")` anywhere in src/ (a lookup outside src/config/).
(b) Every OpenAI error `code` the code emits appears, in backticks, in a table row of
    docs/errors.md outside the row's first cell (the first cell describes the situation,
    or what Dify answered). Every client-facing error is built by
    `ClientError::new(status, type, code, message)`; its code argument is either
    `Some("literal")`, `None`, or passes a Dify code through: then the codes are the
    string literals of the `match` arm's pattern (`(_, "invalid_param" | ...) =>`) and of
    the expression itself (`Some(if code.is_empty() { "request_too_large" } else { code })`).
(c) Every relative link in README.md and docs/*.md names a file that exists and, with
    `#anchor`, a heading of that file (GitHub's anchors: lower case, punctuation dropped,
    spaces as hyphens).

Run from anywhere: `python3 tests/docs_check.py`. Exits 1 naming what is missing.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
CONFIG_DOC = ROOT / "docs" / "configuration.md"
ERRORS_DOC = ROOT / "docs" / "errors.md"

# Variables the code reads that need no row, with the reason. Empty today: the Lambda
# runtime's own variables (AWS_LAMBDA_RUNTIME_API, AWS_LAMBDA_LOG_LEVEL, ...) are
# documented as "set by Lambda" rather than exempted.
EXEMPT_VARS: dict[str, str] = {}

ENV_NAME = r"[A-Z][A-Z0-9_]*[A-Z0-9]"
CONFIG_LITERAL = re.compile(r'"(' + ENV_NAME + r')"')
ENV_READ = re.compile(r'\benv::var(?:_os)?\(\s*"(' + ENV_NAME + r')"\s*\)')
LOOKUP_CALL = re.compile(r'\b(?:get|lookup)\(\s*"(' + ENV_NAME + r')"\s*\)')
STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")


def strip_tests(text: str) -> str:
    """The file without its `#[cfg(test)]` items (a `mod tests { ... }` or one item)."""
    out = []
    i = 0
    while True:
        j = text.find("#[cfg(test)]", i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:j])
        k = j + len("#[cfg(test)]")
        # The item ends at its `;` (e.g. `mod tests;`) or its matching closing brace.
        end = skip_item(text, k)
        i = end


def skip_item(text: str, k: int) -> int:
    depth = 0
    n = len(text)
    while k < n:
        c = text[k]
        if text.startswith("//", k):
            k = text.find("\n", k)
            k = n if k < 0 else k
            continue
        if text.startswith("/*", k):
            e = text.find("*/", k + 2)
            k = n if e < 0 else e + 2
            continue
        m = re.match(r'r(#*)"', text[k:k + 10])
        if m and (k == 0 or not (text[k - 1].isalnum() or text[k - 1] == "_")):
            close = '"' + m.group(1)
            e = text.find(close, k + len(m.group(0)))
            k = n if e < 0 else e + len(close)
            continue
        if c == '"':
            m = STRING.match(text, k)
            k = m.end() if m else n
            continue
        if c == "'":
            # A char literal ('{', '\'', '\u{7b}'), not a lifetime ('a).
            m = re.match(r"'(?:\\.|\\u\{[0-9a-fA-F]+\}|[^\\'])'", text[k:k + 12])
            if m:
                k += m.end()
                continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return k + 1
        elif c == ";" and depth == 0:
            return k + 1
        k += 1
    return n


def rust_sources():
    for path in sorted(SRC.rglob("*.rs")):
        rel = path.relative_to(SRC)
        if "tests" in rel.parts[:-1] or path.name == "tests.rs":
            continue
        yield path, strip_tests(path.read_text(encoding="utf-8"))


def env_vars_read() -> dict[str, set[str]]:
    """Variable → the files that read it."""
    found: dict[str, set[str]] = {}
    for path, text in rust_sources():
        rel = str(path.relative_to(ROOT))
        names = set(ENV_READ.findall(text)) | set(LOOKUP_CALL.findall(text))
        if path.is_relative_to(SRC / "config"):
            names |= set(CONFIG_LITERAL.findall(text))
        for name in names:
            found.setdefault(name, set()).add(rel)
    return found


def call_args(text: str, open_paren: int) -> list[str]:
    """The top-level comma-separated arguments of the call whose `(` is at open_paren."""
    args, depth, start, k = [], 0, open_paren + 1, open_paren
    n = len(text)
    while k < n:
        c = text[k]
        if c == '"':
            m = STRING.match(text, k)
            k = m.end() if m else n
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                args.append(text[start:k])
                return [a.strip() for a in args]
        elif c == "," and depth == 1:
            args.append(text[start:k])
            start = k + 1
        k += 1
    return [a.strip() for a in args]


def error_codes_emitted() -> dict[str, set[str]]:
    """Code → the files that emit it."""
    found: dict[str, set[str]] = {}
    for path, text in rust_sources():
        rel = str(path.relative_to(ROOT))
        for m in re.finditer(r"\bClientError::new\(", text):
            args = call_args(text, m.end() - 1)
            if len(args) < 3:
                continue
            code = args[2]
            if code == "None":
                continue
            literal = re.fullmatch(r'Some\(\s*"([^"]*)"\s*\)', code)
            if literal:
                codes = {literal.group(1)}
            else:
                codes = {s for s in STRING.findall(code) if SNAKE.match(s)}
                if re.search(r"\bcode\b", code):
                    # A Dify code passed through: the arm's pattern lists which.
                    arm_start = text.rfind("\n", 0, m.start()) + 1
                    line = text[arm_start:m.start()]
                    if "=>" in line:
                        pattern = line.split("=>")[0].split(" if ")[0]
                        codes |= {s for s in STRING.findall(pattern) if SNAKE.match(s)}
            for c in codes:
                found.setdefault(c, set()).add(rel)
    return found


def table_rows(path: pathlib.Path) -> list[list[str]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line.startswith("|") or re.fullmatch(r"\|[\s:|-]*\|", line):
            continue
        # Split on pipes outside backticks (`a|b` in a cell stays one cell).
        cells, cur, tick = [], "", False
        for ch in line[1:]:
            if ch == "`":
                tick = not tick
            if ch == "|" and not tick:
                cells.append(cur.strip())
                cur = ""
            else:
                cur += ch
        rows.append(cells)
    return rows


def backticked(cell: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", cell))


def anchor(heading: str) -> str:
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
    found, fenced = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            found.add(anchor(line.lstrip("#")))
    return found


def broken_links() -> tuple[list[str], int]:
    """The broken links, and how many relative links were checked."""
    broken, checked = [], 0
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)
        text = re.sub(r"`[^`\n]*`", "", text)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            checked += 1
            file_part, _, frag = target.partition("#")
            dest = (doc.parent / file_part).resolve() if file_part else doc
            where = f"({target}) in {doc.relative_to(ROOT)}"
            if not dest.exists():
                broken.append(f"{where} names a file that does not exist")
            elif frag and dest.suffix == ".md" and frag not in anchors(dest):
                broken.append(f"{where} names no heading of {dest.relative_to(ROOT)}")
    return broken, checked


def main() -> int:
    failures = []

    variables = env_vars_read()
    documented_vars = set()
    for cells in table_rows(CONFIG_DOC):
        if cells:
            documented_vars |= backticked(cells[0])
    missing_vars = sorted(v for v in variables if v not in documented_vars and v not in EXEMPT_VARS)
    for v in missing_vars:
        failures.append(
            f"MISSING environment variable {v} (read in {', '.join(sorted(variables[v]))}) "
            f"has no row in docs/configuration.md (`{v}` in a table row's first cell)"
        )

    codes = error_codes_emitted()
    documented_codes = set()
    for cells in table_rows(ERRORS_DOC):
        for cell in cells[1:]:
            documented_codes |= backticked(cell)
    missing_codes = sorted(c for c in codes if c not in documented_codes)
    for c in missing_codes:
        failures.append(
            f"MISSING error code {c} (emitted in {', '.join(sorted(codes[c]))}) "
            f"is not in docs/errors.md (`{c}` in a table row, outside its first cell)"
        )

    links, links_checked = broken_links()
    failures.extend(f"BROKEN link {b}" for b in links)

    if not variables or not codes:
        failures.append(
            f"found {len(variables)} environment variables and {len(codes)} error codes "
            "in src/: the extraction no longer matches how the code reads or emits them"
        )

    for f in failures:
        print(f"docs check: {f}")
    if failures:
        print(f"docs check: FAILED, {len(failures)} problem(s)")
        return 1
    print(
        f"docs check: {len(variables)} env vars, {len(codes)} error codes documented "
        f"({len(EXEMPT_VARS)} exempt), {links_checked} relative links resolve"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
