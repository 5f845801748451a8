"""The README and docs/*.md: every relative link reaches a file (and a heading, for `#anchor`
links), the README links every reference page, and it names the two commands CI and users run."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_PAGES = ("pipeline", "evolve", "train", "evaluate", "cluster", "testing")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)


def prose(page: Path) -> str:
    """The page without code blocks and inline code, where brackets are not links."""
    return CODE.sub("", page.read_text(encoding="utf-8"))


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
    headings = re.findall(r"^#{1,6} +(.+?) *$", text, flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def broken_links(page: Path) -> list[str]:
    """Relative links of `page` whose file, or whose anchor in a markdown file, does not exist."""
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or (anchor and file.suffix == ".md" and anchor not in anchors(file)):
            broken.append(f"{page.name}: {target}")
    return broken


def test_every_relative_link_in_readme_and_docs_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert [link for page in pages for link in broken_links(page)] == []


def test_readme_links_every_reference_page():
    linked = set(LINK.findall(prose(ROOT / "README.md")))
    for name in REFERENCE_PAGES:
        assert (ROOT / "docs" / f"{name}.md").is_file(), name
        assert f"docs/{name}.md" in linked, name


def test_readme_names_the_two_commands_and_make_has_them():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in first_block.splitlines()] == [["make", "run"], ["make", "test"]]
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^run:", makefile, re.MULTILINE) and re.search(r"^test:", makefile, re.MULTILINE)


def test_link_check_reports_a_missing_page_and_a_missing_heading(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "here.md").write_text("# Here\n\n## Some `code` (section)\n")
    readme = tmp_path / "README.md"
    readme.write_text("[a](docs/here.md) [b](docs/gone.md) [c](docs/here.md#some-code-section) "
                      "[d](docs/here.md#nowhere) [e](https://example.com/x) `[f](nolink.md)`\n")
    assert broken_links(readme) == ["README.md: docs/gone.md", "README.md: docs/here.md#nowhere"]
