"""Every relative markdown link in the shipped docs points to a file the repository ships, and every #anchor to a
heading of its target (GitHub's slugs)."""
from __future__ import annotations

import re
import subprocess
import unicodedata
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCS = ("README.md", "docs/*.md", "jobs/README.md", "bench/*.md", "models/*/README.md")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+).*?\1")


def shipped() -> set[str]:
    """Tracked files plus new ones git would add (not ignored): what a clone of the repository holds."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout: cannot tell shipped files from local ones")
    return {p for p in out.split("\0") if p and (ROOT / p).exists()}


def doc_files() -> list[Path]:
    return sorted({p for pattern in DOCS for p in ROOT.glob(pattern) if p.is_file()})


def lines_outside_code(text: str, blank_inline: bool = True):
    """(line number, line) outside fenced code blocks, inline code spans blanked (blank_inline)."""
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield n, INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line) if blank_inline else line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped (letters, digits, spaces, '-' and
    '_' kept), spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)     # a link's text only
    text = text.replace("`", "").strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in lines_outside_code(path.read_text(encoding="utf-8"), blank_inline=False):
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def dead_links() -> list[str]:
    files = shipped()
    folders = {str(parent) for p in files for parent in Path(p).parents}
    dead = []
    for doc in doc_files():
        rel_doc = doc.relative_to(ROOT)
        for n, line in lines_outside_code(doc.read_text(encoding="utf-8")):
            for m in LINK.finditer(line):
                target = m.group(1)
                if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):      # http:, https:, mailto:
                    continue
                path, _, anchor = target.partition("#")
                where = f"{rel_doc}:{n}: ({target})"
                if path:
                    resolved = (doc.parent / path).resolve()
                    try:
                        rel = str(resolved.relative_to(ROOT))
                    except ValueError:
                        dead.append(f"{where} points outside the repository")
                        continue
                    if rel not in files and rel.rstrip("/") not in folders:
                        dead.append(f"{where} {rel} is not in the repository")
                        continue
                else:
                    resolved = doc
                if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                    dead.append(f"{where} no heading #{anchor} in {resolved.relative_to(ROOT)}")
    return dead


def test_slugs_are_githubs():
    assert slug("The demo") == "the-demo"
    assert slug("On a Slurm cluster (GH200)") == "on-a-slurm-cluster-gh200"
    assert slug("`plot` several runs: N-scaling, σ") == "plot-several-runs-n-scaling-σ"
    assert slug("results.h5 — schema version 2") == "resultsh5--schema-version-2"
    assert slug("Prompts: `model.chat` and `task.prompt_style`") == "prompts-modelchat-and-taskprompt_style"


def test_the_checker_finds_dead_links(tmp_path, monkeypatch):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# Top\n## A `b` c\n[ok](docs/x.md#part) [self](#a-b-c) [web](https://x.org/y)\n"
                                        "[gone](docs/missing.md) [bad](#nowhere) `[code](not/a/link.md)`\n"
                                        "```\n[fenced](no/such.md)\n```\n![img](docs/y.png)\n")
    (tmp_path / "docs" / "x.md").write_text("# X\n## Part\n[up](../README.md#top) [out](../../outside.md)\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "shipped", lambda: {"README.md", "docs/x.md"})
    dead = dead_links()
    assert [d.split(" ", 1)[0] for d in dead] == ["README.md:4:", "README.md:4:", "README.md:8:", "docs/x.md:3:"]
    assert "docs/missing.md is not in the repository" in dead[0] and "no heading #nowhere" in dead[1]
    assert "docs/y.png" in dead[2] and "outside the repository" in dead[3]


def test_no_dead_links_in_the_docs():
    assert doc_files(), "no docs found"
    dead = dead_links()
    assert not dead, "dead links:\n" + "\n".join(dead)
