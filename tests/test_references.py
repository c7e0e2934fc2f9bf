"""Every document the code cites is in the repository (docs/architecture.md, "Three layers").

A clone of the project has only what is committed: a comment that points at a design note kept
elsewhere points at nothing. These tests read the code, tests, notebooks (as text), benchmarks,
recipes and documentation, and fail on

- a citation of the old design notes that lived outside the repository (their names are in
  `OUTSIDE`), with the section of docs/ that now holds the content;
- a path-like `*.md` reference to a file that does not exist;
- `docs/<page>.md §N` where §N is not a numbered heading of that page, and
  `docs/<page>.md, "Heading"` where no heading of that page starts with those words;
- a module of `ibdml/` missing from docs/architecture.md's module map, or a module named there
  (or an `ibdml/….py` path anywhere in the docs) that does not exist.

Pure text checks: nothing is imported or run.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
THIS = Path(__file__).resolve()

# What is scanned: code, tests, notebooks (JSON read as text), benchmarks, recipes, docs.
SCANNED = ("ibdml/**/*.py", "tests/**/*.py", "notebooks/**/*.ipynb", "bench/**/*.py",
           "bench/**/*.md", "params/**/*.yaml", "docs/**/*.md", "README.md", "Makefile",
           "pyproject.toml", "environment.yml", "outputs/README.md")

# The old notes' names, spelled in pieces so that this file does not cite them itself.
OUTSIDE = ("METHOD" + "_SPEC", "FIELD" + "_NOTES", "DESIGN")
OUTSIDE_RE = re.compile(r"\b(?:%s|%s)\b|\b%s\b(?:\.md)?" % OUTSIDE)

# Where their cited content lives now: rewrites applied in order to a citation as written, giving
# the citation to write instead (shown in the failure message). The method notes keep their
# section numbers in docs/method.md; §13's and §14's named parts became numbered sub-sections.
M, F, D = OUTSIDE
REWRITES = (
    (r'§\s*14,?\s*"?kNN at evaluation"?', "§14.2"),
    (r'§\s*14,?\s*"?Reciprocal-kNN construction"?', "§14.4"),
    (r"§\s*14\s+steps", "§14.4 steps"),
    (r"§\s*14\s+(\d+\s*[–-]\s*\d+)", r"§14.4 steps \1"),
    (r'§\s*13,?\s*"?Recommended definitions"?', "§13.3"),
    (r'"Take the unique \.\.\."', '"Selection"'),
    (rf"\b{M}\s+(B\d+)", r"docs/method.md §11 \1"),
    (rf"\b{M}\b", "docs/method.md"),
    (rf"\b{F}\s+B\.1", 'docs/datasets.md, "Getting the datasets: known pitfalls"'),
    (rf"\b{F}\s+B\.2", 'docs/architecture.md, "Optional dependencies: faiss"'),
    (rf"\b{F}\s+B\.3", 'docs/protocol.md, "What every result file records"'),
    (rf"\b{F}\s+B\.4", 'docs/protocol.md, "Recall@K, with the query excluded by index"'),
    (rf"\b{F}\b", 'docs/protocol.md, "Pitfalls this protocol avoids"'),
    (rf'\b{D}(?:\.md)?[,:]?\s*"?Glyphs facts"?', 'docs/datasets.md, "Glyphs facts"'),
    (rf"\b{D}(?:\.md)?:\s*(?=early epochs)", 'docs/datasets.md, "Glyphs facts": '),
    (rf'\b{D}(?:\.md)?[,:]?\s*"?Parameters and papermill"?',
     'docs/architecture.md, "Parameters and papermill"'),
    (rf'\b{D}(?:\.md)?[,:]?\s*"?Environment facts"?', 'docs/architecture.md, "Environment facts"'),
    (rf"\b{D}(?:\.md)?\b", "docs/architecture.md"),
)

URL_RE = re.compile(r"https?://\S+")
MD_PATH_RE = re.compile(r"(?<![\w/.@-])((?:\.\.?/)?(?:[\w-]+/)*[\w.-]*\w\.md)\b")
# A page of docs/ (or a relative link to one, from inside docs/), then a chain of § numbers,
# or a quoted heading.
PAGE = r"(?:(?P<path>docs/[\w-]+\.md)|\]\((?P<link>[\w-]+\.md)\))"
SECTION_CHAIN_RE = re.compile(
    PAGE + r"(?P<chain>(?:[\s,#*]*(?:and\s+)?§\s*\d+(?:\.\d+)*(?:\s*[–-]\s*\d+(?:\.\d+)*)?)+)")
PART_RE = re.compile(PAGE + r"[\s,]*(?P<part>Part \d+)")
QUOTED_HEADING_RE = re.compile(PAGE + r"[,:]?\s*[\"“](?P<heading>[^\"”\n]+)[\"”]")
NUMBER_RE = re.compile(r"\d+(?:\.\d+)*")
HEADING_RE = re.compile(r"^#{1,6}\s+(?P<text>.+?)\s*$")
HEADING_NUMBER_RE = re.compile(r"^(?:§\s*)?(\d+(?:\.\d+)*)\.?(?:\s|$)")


def scanned_files() -> list[Path]:
    files = {p.resolve() for pattern in SCANNED for p in ROOT.glob(pattern) if p.is_file()}
    skipped = ("/.venv/", "/.ipynb_checkpoints/", "/__pycache__/")
    return sorted(p for p in files if p != THIS and not any(s in str(p) for s in skipped))


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def where(path: Path, text: str, offset: int) -> str:
    return f"{path.relative_to(ROOT)}:{line_of(text, offset)}"


def headings(page: Path) -> tuple[set[str], list[str]]:
    """(section numbers, heading texts) of a markdown page, code blocks left out."""
    numbers, texts, fenced = set(), [], False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else HEADING_RE.match(line)
        if m:
            text = m["text"].replace("`", "")
            number = HEADING_NUMBER_RE.match(text)
            if number:
                numbers.add(number[1])
                text = text[number.end():]
            texts.append(text.strip().lower())
    return numbers, texts


def target_page(match: re.Match, source: Path) -> Path:
    return ROOT / match["path"] if match["path"] else source.parent / match["link"]


def suggestion(citation: str) -> str:
    """The citation to write instead of `citation` (which names one of the old notes)."""
    for pattern, new in REWRITES:
        citation = re.sub(pattern, new, citation)
    return citation


# --- Tests ----------------------------------------------------------------------------------


def test_no_citation_of_notes_outside_the_repository():
    found = []
    for path in scanned_files():
        text = path.read_text(errors="replace")
        for m in OUTSIDE_RE.finditer(text):
            # the citation as written: up to the end of its clause, joined across a line break
            rest = re.split(r"[);]|\.\s|\n\s*\n", text[m.start():m.start() + 160])[0]
            citation = " ".join(rest.replace("#", " ").split())
            found.append(f"{where(path, text, m.start())}: {citation!r} → {suggestion(citation)}")
    assert not found, (
        f"{len(found)} citation(s) of notes that are not in the repository; cite the docs/ "
        "section that holds the content now (suggested after each →):\n" + "\n".join(found))


def test_cited_markdown_files_exist():
    basenames = {p.name for p in ROOT.rglob("*.md") if ".venv" not in p.parts}
    found = []
    for path in scanned_files():
        text = path.read_text(errors="replace")
        for m in MD_PATH_RE.finditer(URL_RE.sub(lambda u: " " * len(u[0]), text)):
            name = m[1]
            if OUTSIDE_RE.search(name):
                continue  # reported by the test above, with its replacement
            candidates = [ROOT / name, path.parent / name]
            if "/" not in name and name in basenames:
                continue  # a bare file name: some file of the repository has it
            if not any(c.is_file() for c in candidates):
                found.append(f"{where(path, text, m.start())}: {name}")
    assert not found, ("references to markdown files that are not in the repository (give the "
                       "path from the repository root, or add the file):\n" + "\n".join(found))


def test_cited_sections_exist():
    found = []
    for path in scanned_files():
        text = path.read_text(errors="replace")
        for m in SECTION_CHAIN_RE.finditer(text):
            page = target_page(m, path)
            if not page.is_file():
                continue  # reported by test_cited_markdown_files_exist
            numbers, _ = headings(page)
            missing = [n for n in NUMBER_RE.findall(m["chain"]) if n not in numbers]
            if missing:
                found.append(f"{where(path, text, m.start())}: {page.relative_to(ROOT)} has no "
                             f"section {', '.join('§' + n for n in missing)}")
        for m in PART_RE.finditer(text):
            page = target_page(m, path)
            if page.is_file() and not any(t.startswith(m["part"].lower())
                                          for t in headings(page)[1]):
                found.append(f"{where(path, text, m.start())}: {page.relative_to(ROOT)} has no "
                             f"heading {m['part']!r}")
        for m in QUOTED_HEADING_RE.finditer(text):
            page = target_page(m, path)
            wanted = m["heading"].replace("`", "").strip().lower()
            if page.is_file() and not any(t.startswith(wanted) for t in headings(page)[1]):
                found.append(f"{where(path, text, m.start())}: {page.relative_to(ROOT)} has no "
                             f"heading starting {m['heading']!r}")
    assert not found, ("citations of sections that their page does not have (cite an existing "
                       "heading, or add it):\n" + "\n".join(found))


def library_modules() -> set[str]:
    """Module files of ibdml/, relative to it (`mpn.py`, `data/sampler.py`), __init__ left out."""
    lib = ROOT / "ibdml"
    return {p.relative_to(lib).as_posix() for p in lib.rglob("*.py")
            if p.name != "__init__.py" and "__pycache__" not in p.parts}


def test_the_module_map_lists_the_library():
    page = (DOCS / "architecture.md").read_text()
    section = page.split("## Module map", 1)[1].split("\n## ", 1)[0]
    # rows name modules relative to ibdml/: `mpn.py`, `data/sampler.py`, `steps/train.py`
    listed = set(re.findall(r"^\| `([\w/]+\.py)` \|", section, flags=re.MULTILINE))
    actual = library_modules()
    unlisted, gone = sorted(actual - listed), sorted(listed - actual)
    assert not unlisted and not gone, (
        "docs/architecture.md's module map and ibdml/ disagree: "
        f"not in the map {unlisted}; in the map but not in ibdml/ {gone}. Update the map (and "
        "README.md's \"Map of the code\").")


def test_library_paths_in_the_docs_exist():
    found = []
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = path.read_text()
        for m in re.finditer(r"`(ibdml/[\w/]+\.py)`", text):
            if not (ROOT / m[1]).is_file():
                found.append(f"{where(path, text, m.start())}: {m[1]}")
    assert not found, "the docs name library files that do not exist:\n" + "\n".join(found)


def test_the_checks_catch_what_they_look_for(tmp_path):
    old = OUTSIDE[0] + " §7.3"
    assert OUTSIDE_RE.search(f"(see {old})") and suggestion(old) == "docs/method.md §7.3"
    assert suggestion(M + " Part 1, rows") == "docs/method.md Part 1, rows"
    assert suggestion(M + " B8") == "docs/method.md §11 B8"
    assert suggestion(M + " §14 steps 1–3") == "docs/method.md §14.4 steps 1–3"
    assert suggestion(D + ".md: early epochs dip") == 'docs/datasets.md, "Glyphs facts": early epochs dip'
    assert suggestion(F + " B.3") == 'docs/protocol.md, "What every result file records"'
    chain = SECTION_CHAIN_RE.search("(docs/method.md §4.2–4.3, §7 and §14)")
    assert chain["path"] == "docs/method.md"
    assert NUMBER_RE.findall(chain["chain"]) == ["4.2", "4.3", "7", "14"]
    quoted = QUOTED_HEADING_RE.search('(docs/architecture.md, "Run folders")')
    assert quoted["heading"] == "Run folders"
    page = tmp_path / "page.md"
    page.write_text("# Title\n## 7. Evaluation\n### 7.3 In-Shop\n```\n## 9. not a heading\n```\n")
    assert headings(page) == ({"7", "7.3"}, ["title", "evaluation", "in-shop"])
    assert MD_PATH_RE.findall("see docs/method.md and [x](../bench/RESULTS.md#top), a.b") == [
        "docs/method.md", "../bench/RESULTS.md"]
