"""A documentation-refresh corpus from two releases' reStructuredText docs trees: stale pages, their new versions, and a "What's New" page to score.

The stale index holds the older release's pages; the fresh one the newer release's under the same
page ids (each page replaced by its new version, pages gone from the newer release removed); the
sections of the newer release's "What's New" page are scored and never indexed. Pages are RST, read
as plain text by :func:`rst_to_text`: a light, line-based reading (markup roles and directives
reduced to their text, code blocks kept, section underlines, labels and directive options dropped)
rather than a Sphinx build, which would need the project's own extensions.
"""

from __future__ import annotations

import fnmatch
import re
import textwrap
from pathlib import Path
from typing import Iterable

UNDERLINE = re.compile(r"^([=\-^~\"'`#*+.:_])\1{2,}\s*$")  # a section title's over/underline
ROLE = re.compile(r":[\w.:+-]+:`([^`]*)`")  # :class:`~sqlalchemy.orm.Session`, :ref:`text <label>`
LINK = re.compile(r"`([^`<]+?)\s*(?:<[^>]*>)?`__?")  # `text <url>`_ and `text`_
TARGET = re.compile(r"\s*<[^>]*>$")
DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::\s*(.*)$")
COMMENT = re.compile(r"^(\s*)\.\.(\s|$)")
OPTION = re.compile(r"^\s*:[\w -]+:(\s.*)?$")
# Directives whose body is prose or code worth reading; the others (autodoc, toctree, images, ...)
# are dropped with their bodies, keeping the argument of an autodoc one (the documented name).
KEEP_BODY = {"note", "warning", "tip", "seealso", "versionadded", "versionchanged", "deprecated", "topic", "admonition",
             "sourcecode", "code-block", "code", "highlight", "important", "attention", "caution", "hint", "rubric",
             "container", "div", "changelog", "change", "versionremoved"}
AUTODOC = re.compile(r"^auto(class|function|method|attribute|data|module|exception)$")


def _role_text(match: re.Match) -> str:
    text = TARGET.sub("", match.group(1)).strip()
    if text.startswith("~"):  # Sphinx shows only the last dotted part
        text = text[1:].rsplit(".", 1)[-1]
    # SQLAlchemy's docs qualify names with a private module alias (_orm.Session) that renders bare.
    return re.sub(r"^_\w+\.", "", text.lstrip("!").lstrip("."))


def inline_text(line: str) -> str:
    """One line's inline markup as text: roles, links, ``literals``, **strong**, *emphasis*."""
    line = ROLE.sub(_role_text, line)
    line = LINK.sub(lambda m: m.group(1).strip(), line)
    line = line.replace("``", "")
    return re.sub(r"(?<![\w*])\*\*?([^*\s][^*]*?)\*\*?(?![\w*])", r"\1", line)


def rst_to_text(source: str) -> str:
    """A reStructuredText page as plain text (see the module docstring for what is kept).

    Args:
        source: the page's RST.

    Returns:
        Its text: paragraphs, list items, titles and code, separated by blank lines as in the source.
    """
    out: list[str] = []
    lines = source.splitlines()
    i = 0
    drop_indent: int | None = None  # skipping the body of a dropped directive or comment, indented deeper than this
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if drop_indent is not None:
            if not stripped or indent > drop_indent:
                i += 1
                continue
            drop_indent = None
        if UNDERLINE.match(line):
            i += 1
            continue
        directive = DIRECTIVE.match(line)
        if directive:
            name, argument = directive.group(2).lower(), directive.group(3).strip()
            if name in KEEP_BODY:
                if name in ("note", "warning", "tip", "seealso", "important", "deprecated", "versionadded", "versionchanged"):
                    label = name.replace("version", "version ")
                    out.append(f"{label.capitalize()}: {inline_text(argument)}".rstrip())
                elif name in ("topic", "admonition", "rubric") and argument:
                    out.append(inline_text(argument))
                # The body follows, indented: read it, skipping the directive's option lines.
                i += 1
                while i < len(lines) and OPTION.match(lines[i]) and lines[i].strip():
                    i += 1
                continue
            if AUTODOC.match(name) and argument:
                out.append(argument)
            drop_indent = indent
            i += 1
            continue
        if COMMENT.match(line):  # a label (.. _name:), a substitution or a comment
            drop_indent = indent
            i += 1
            continue
        if stripped.endswith("::"):  # "Example::" introduces a literal block
            stripped = stripped[:-2].rstrip()
            line = line.rstrip()[:-2].rstrip() + (":" if stripped else "")
        out.append(inline_text(line.rstrip()))
        i += 1
    text = "\n\n".join(textwrap.dedent(block) for block in "\n".join(out).split("\n\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def read_doc_tree(root: str | Path, *, exclude: Iterable[str] = ()) -> dict[str, str]:
    """Every ``.rst`` page under ``root`` as text, by page id (its path without ``.rst``, e.g. ``orm/session``).

    Args:
        root: the docs source folder (e.g. ``doc/build`` of a SQLAlchemy sdist).
        exclude: glob patterns of page ids left out (e.g. ``changelog/changelog_1*``).

    Raises:
        FileNotFoundError: ``root`` has no ``.rst`` page.
    """
    root = Path(root)
    patterns = list(exclude)
    pages = {}
    for path in sorted(root.rglob("*.rst")):
        page = path.relative_to(root).with_suffix("").as_posix()
        if any(fnmatch.fnmatch(page, p) for p in patterns):
            continue
        text = rst_to_text(path.read_text(encoding="utf-8", errors="replace"))
        if text.strip():
            pages[page] = text
    if not pages:
        raise FileNotFoundError(f"no .rst page under {root}; pass the docs source folder (the one holding conf.py and index.rst)")
    return pages


def rst_sections(source: str, *, min_chars: int = 200) -> list[tuple[str, str]]:
    """A page cut at every section title: ``(title, text)`` per section, its title first in its text.

    Sections with less than ``min_chars`` of text (a heading over only labels) are left out.
    """
    lines = source.splitlines()
    starts = [i - 1 for i in range(1, len(lines)) if UNDERLINE.match(lines[i]) and lines[i - 1].strip()
              and not UNDERLINE.match(lines[i - 1]) and len(lines[i].strip()) >= len(lines[i - 1].strip())]
    out = []
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        if n + 1 < len(starts) and end > 0 and UNDERLINE.match(lines[end - 1]):
            end -= 1  # the next title's overline
        title = inline_text(lines[start].strip())
        text = rst_to_text("\n".join(lines[start:end]))
        if len(text) >= min_chars:
            out.append((title, text))
    return out


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def refresh_corpus(stale_root: str | Path, fresh_root: str | Path, *, scored_page: str, base_url: str, published_at: str,
                   exclude: Iterable[str] = (), min_chars: int = 200) -> dict:
    """The stale pages, the fresh pages (same ids, replaced) and the scored sections of ``scored_page``.

    Args:
        stale_root, fresh_root: the two releases' docs source folders.
        scored_page: the page id whose sections are scored (read from ``fresh_root``; never indexed).
        base_url: page ``p`` is indexed under ``{base_url}/{p}.html`` in both versions.
        published_at: the scored sections' date (ISO).
        exclude: page id patterns kept out of both versions.
        min_chars: shorter sections are not scored.

    Returns:
        ``stale`` and ``fresh`` ({url: text}), ``evaluated`` (``{"text", "published_at", "url"}``
        records), and ``pages`` (counts: stale, fresh, changed, added, removed).

    Raises:
        FileNotFoundError: the scored page is missing from ``fresh_root``.
        ValueError: it has no section of ``min_chars`` or more.
    """
    fresh_root = Path(fresh_root)
    page_file = fresh_root / f"{scored_page}.rst"
    if not page_file.exists():
        raise FileNotFoundError(f"{page_file} is missing: the scored page must be in the newer release's docs")
    skip = [*exclude, scored_page]
    stale = read_doc_tree(stale_root, exclude=skip)
    fresh = read_doc_tree(fresh_root, exclude=skip)
    sections = rst_sections(page_file.read_text(encoding="utf-8", errors="replace"), min_chars=min_chars)
    if not sections:
        raise ValueError(f"{page_file} has no section of {min_chars} characters or more to score")
    seen: dict[str, int] = {}
    evaluated = []
    for title, text in sections:
        key = slug(title) or "section"
        seen[key] = seen.get(key, 0) + 1
        anchor = key if seen[key] == 1 else f"{key}-{seen[key]}"
        evaluated.append({"text": text, "published_at": published_at, "url": f"{base_url}/{scored_page}.html?section={anchor}"})

    def url(page: str) -> str:
        return f"{base_url}/{page}.html"

    changed = sum(1 for p in stale if p in fresh and stale[p] != fresh[p])
    return {
        "stale": {url(p): t for p, t in stale.items()},
        "fresh": {url(p): t for p, t in fresh.items()},
        "evaluated": evaluated,
        "pages": {"stale": len(stale), "fresh": len(fresh), "changed": changed, "added": len(set(fresh) - set(stale)),
                  "removed": len(set(stale) - set(fresh))},
    }
