"""The documentation-refresh corpus: RST read as text, two docs trees paired by page id, a "What's New" page cut into scored sections."""

from __future__ import annotations

import pytest

from model.evaluation.doctrees import read_doc_tree, refresh_corpus, rst_sections, rst_to_text

PAGE = """\
.. _session_basics:

==============
Session Basics
==============

The :class:`_orm.Session` establishes all conversations with the database.
See :ref:`the tutorial <tutorial>` and `the FAQ <https://example.org/faq>`_;
``Session.commit()`` commits, :meth:`~sqlalchemy.orm.Session.flush` **flushes**.

.. note:: The Session is not thread-safe.

   Use one per thread.

.. autoclass:: sqlalchemy.orm.Session
   :members:

   Documented from the docstring.

A typical use looks like::

    with Session(engine) as session:
        session.add(obj)

.. toctree::
   :maxdepth: 2

   other

.. versionadded:: 2.0 The ``autobegin`` parameter.

* first item
* second item
"""


def test_rst_reads_as_plain_text():
    text = rst_to_text(PAGE)
    assert text.startswith("Session Basics\n\nThe Session establishes all conversations with the database.")
    assert "See the tutorial and the FAQ;" in text and "Session.commit() commits, flush flushes." in text
    assert "Note: The Session is not thread-safe.\n\nUse one per thread." in text
    assert "sqlalchemy.orm.Session\n" in text and "Documented from the docstring" not in text and ":members:" not in text
    assert "A typical use looks like:\n\nwith Session(engine) as session:\n    session.add(obj)" in text
    assert "maxdepth" not in text and "other" not in text.split("session.add(obj)")[1].split("Version added")[0]
    assert "Version added: 2.0 The autobegin parameter." in text and "* first item\n* second item" in text
    assert "====" not in text and "_session_basics" not in text and ":class:" not in text


WHATSNEW = """\
=============================
What's New in SQLAlchemy 9.1?
=============================

Introduction
============

This guide introduces what's new in SQLAlchemy version 9.1, and documents the changes
which affect users migrating their applications from 9.0 to 9.1.

ORM - New Features
==================

.. _change_1:

Session-level execution options added
-------------------------------------

The :class:`_orm.Session` constructor now accepts an execution_options parameter, which
establishes a dictionary of options applied across all operations within that session.

Short
-----

Too short to score.
"""


def write_tree(root, pages: dict[str, str]):
    for page, source in pages.items():
        path = root / f"{page}.rst"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root


def test_whats_new_is_cut_into_sections_with_their_titles():
    sections = rst_sections(WHATSNEW, min_chars=100)
    assert [title for title, _ in sections] == ["Introduction", "Session-level execution options added"]
    assert sections[1][1].startswith("Session-level execution options added\n\nThe Session constructor now accepts")
    assert "change_1" not in sections[1][1] and "ORM - New Features" not in sections[1][1]


def test_refresh_corpus_pairs_pages_by_id_and_never_indexes_the_scored_page(tmp_path):
    stale = write_tree(tmp_path / "9.0", {"index": "Index\n=====\n\nWelcome to 9.0.\n", "orm/session": PAGE,
                                          "orm/gone": "Gone\n====\n\nRemoved in 9.1.\n",
                                          "changelog/changelog_08": "Old\n===\n\nAncient history.\n"})
    fresh = write_tree(tmp_path / "9.1", {"index": "Index\n=====\n\nWelcome to 9.1.\n", "orm/session": PAGE,
                                          "orm/new": "New\n===\n\nAdded in 9.1.\n", "changelog/migration_91": WHATSNEW,
                                          "changelog/changelog_08": "Old\n===\n\nAncient history.\n"})
    corpus = refresh_corpus(stale, fresh, scored_page="changelog/migration_91", base_url="https://docs.example/en",
                            published_at="2026-11-16", exclude=["changelog/changelog_0*"], min_chars=100)
    url = "https://docs.example/en/{}.html".format
    assert set(corpus["stale"]) == {url("index"), url("orm/session"), url("orm/gone")}
    assert set(corpus["fresh"]) == {url("index"), url("orm/session"), url("orm/new")}
    assert corpus["fresh"][url("index")] == "Index\n\nWelcome to 9.1.\n" and corpus["stale"][url("index")] == "Index\n\nWelcome to 9.0.\n"
    assert corpus["pages"] == {"stale": 3, "fresh": 3, "changed": 1, "added": 1, "removed": 1}
    assert [d["url"] for d in corpus["evaluated"]] == [url("changelog/migration_91") + "?section=introduction",
                                                       url("changelog/migration_91") + "?section=session-level-execution-options-added"]
    assert all(d["published_at"] == "2026-11-16" for d in corpus["evaluated"])
    indexed = " ".join([*corpus["stale"].values(), *corpus["fresh"].values()])
    assert "execution_options" not in indexed and "Ancient" not in indexed
    with pytest.raises(FileNotFoundError, match="newer release"):
        refresh_corpus(stale, fresh, scored_page="changelog/migration_92", base_url="x", published_at="2026-11-16")
    with pytest.raises(FileNotFoundError, match="no .rst page"):
        read_doc_tree(tmp_path / "empty")
