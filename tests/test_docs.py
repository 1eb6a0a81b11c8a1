"""The user documentation (README.md, docs/*.md) speaks of the product and stays true to it:

- no references to run, session or issue numbers, nor to documents that do not ship with the repository;
- every relative link resolves to a file in the repository (and a `#anchor` to a heading of its page);
  a web link goes only to a public project page of the software vvtrt builds on (`EXTERNAL_HOSTS`,
  `EXTERNAL_GITHUB_OWNERS`) or is an example address of a local server;
- every option of every `vvtrt` command appears in README, whose option reference is current;
- the performance table (README) and the results history (docs/results.md) are what
  benchmarks/make_table.py generates from the result files.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# web links may only point at the public pages of the projects vvtrt builds on
EXTERNAL_HOSTS = {"huggingface.co", "pytorch.org", "download.pytorch.org", "onnxruntime.ai", "docs.nvidia.com",
                  "developer.nvidia.com", "catalog.ngc.nvidia.com"}
LOOPBACK = {"127.0.0.1", "localhost"}  # example addresses of a local server
EXTERNAL_GITHUB_OWNERS = {"microsoft", "pytorch", "huggingface", "NVIDIA", "onnx"}
LINK = re.compile(r"(?<!!)\[([^\]]*)\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
BARE_URL = re.compile(r"https?://[^\s)>`'\"]+")
# "run 8", "session 7", "issue 14", "issue #12", "(#12)" - but not "H100", "sm_90" or "&#123;"
NUMBERED = re.compile(r"\b(?:runs?|sessions?|issues?)\s*#?\d+\b|(?<![\w&/])#\d+\b", re.IGNORECASE)
UNSHIPPED = re.compile(r"shared docs?\b|\.\./shared|\b(?:realtime|checkpoints|vibevoice)\.md\b|§\s*\d", re.IGNORECASE)


def _text_without_links(text: str) -> str:
    """The prose: link targets and web addresses removed (directory names of recorded results are paths,
    checked by the link test, not references)."""
    text = LINK.sub(lambda m: m.group(1) or "", text)
    text = BARE_URL.sub("", text)
    return re.sub(r"\S*/\S*", "", text)  # paths (h100/<dir>/...): file names, not references


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_run_session_or_issue_numbers(doc):
    prose = _text_without_links(doc.read_text())
    found = [m.group(0) for m in NUMBERED.finditer(prose)]
    assert not found, f"{doc.name} refers to numbered runs, sessions or issues: {found}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_documents_that_do_not_ship(doc):
    found = [m.group(0) for m in UNSHIPPED.finditer(doc.read_text())]
    assert not found, f"{doc.name} cites documents outside the repository: {found}"


def test_code_cites_no_documents_that_do_not_ship():
    files = [*ROOT.glob("vvtrt/**/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("benchmarks/device/*"),
             *ROOT.glob("tests/*.py"), *ROOT.glob("tools/*.py"), ROOT / "Makefile", ROOT / "Dockerfile"]
    bad = [f"{f.relative_to(ROOT)}:{n}" for f in files if f.is_file() and f.name != "test_docs.py"
           for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1) if UNSHIPPED.search(line)]
    assert not bad, f"references to documents that do not ship: {bad}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[`*_\[\]()]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", page.read_text(), re.MULTILINE)}


def _check_link(doc: Path, target: str) -> str | None:
    """Why `target` (a link in `doc`) is not allowed, or None."""
    url = urlparse(target)
    if url.scheme in ("http", "https"):
        if url.hostname in EXTERNAL_HOSTS or url.hostname in LOOPBACK:
            return None
        owner = url.path.strip("/").split("/")[0]
        if url.hostname == "github.com" and owner in EXTERNAL_GITHUB_OWNERS:
            return None
        return f"{target}: a web link to a page that is not a public page of a project vvtrt builds on"
    if url.scheme:
        return f"{target}: not a relative link"
    path, _, anchor = target.partition("#")
    page = (doc.parent / path).resolve() if path else doc
    if ROOT not in page.parents and page != ROOT:
        return f"{target}: leaves the repository"
    if not page.exists():
        return f"{target}: no such file in the repository"
    if anchor and page.suffix == ".md" and anchor not in _anchors(page):
        return f"{target}: no heading #{anchor} in {page.name}"
    return None


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_stay_in_the_repository(doc):
    text = doc.read_text()
    targets = [m.group(2) or m.group(3) for m in LINK.finditer(text)]
    targets += [u for u in BARE_URL.findall(_prose(text))]
    assert targets or doc.name != "README.md"
    bad = [why for t in targets if (why := _check_link(doc, t))]
    assert not bad, f"{doc.name}: {bad}"


def _prose(text: str) -> str:
    """`text` without links, fenced code blocks and inline code (where example addresses live)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return re.sub(r"`[^`\n]*`", "", LINK.sub("", text))


def _cli_options() -> dict[str, list[str]]:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from make_cli_reference import walk
    finally:
        sys.path.pop(0)
    from vvtrt.cli import cli

    return {name: [o for p in cmd.params if hasattr(p, "opts") and p.param_type_name == "option"
                   for o in p.opts + p.secondary_opts] for name, cmd in walk(cli)}


def test_every_cli_option_is_in_readme():
    readme = (ROOT / "README.md").read_text()
    options = _cli_options()
    assert {"vvtrt export", "vvtrt synth", "vvtrt serve", "vvtrt voices import"} <= set(options)
    for name in options:
        assert f"#### `{name}" in readme, f"README has no section for `{name}`"
    missing = {name: [o for o in opts if f"`{o}`" not in readme] for name, opts in options.items()}
    missing = {k: v for k, v in missing.items() if v}
    assert not missing, f"options missing from README: {missing}"


@pytest.mark.parametrize("script", ["tools/make_cli_reference.py", "benchmarks/make_table.py"])
def test_generated_blocks_are_current(script):
    """README's option reference and performance table, and docs/results.md, equal what the generators
    write from the CLI and from benchmarks/results."""
    res = subprocess.run([sys.executable, script, "--check"], cwd=ROOT, capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stdout + res.stderr


def test_performance_table_is_the_latest_per_gpu_model_precision_and_runtime():
    """The README table holds one row per (GPU, model, precision, runtime) at the default settings, each
    from the newest result file that measured it, and links that JSON."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("make_table", ROOT / "benchmarks" / "make_table.py")
    mt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mt)
    readme = (ROOT / "README.md").read_text()
    block = readme.split(mt.START, 1)[1].split(mt.END, 1)[0].strip()
    rows = block.splitlines()[2:]
    keys = [tuple(c.strip() for c in r.split("|")[1:5]) for r in rows]
    assert rows and len(keys) == len(set(keys))
    for row in rows:
        json_link = re.search(r"\[json\]\(([^)]+)\)", row).group(1)
        d = json.loads((ROOT / json_link).read_text())
        assert d["config"]["steps"] == 10
        p50 = row.split("|")[5].strip()
        label = row.split("|")[4].strip().removeprefix("baseline: ")
        assert p50 in {f"{r['frame']['p50']:.2f}" for r in d["results"] + d["baselines"] if r["label"] == label}
