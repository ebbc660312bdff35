"""A source's limits on what enters the store, applied in one place by every path in.

A site holds at most ``max_pages`` documents. The full crawl (:mod:`beam_jobs.crawl`), the watch's
announcements (:mod:`flows.watch`) and a targeted run's named URLs (:mod:`beam_jobs.targets`) all
ask the same :class:`Admission`: a URL whose document the store already holds is always taken (it
is a re-check: it cannot grow the store), a new one only while the source holds fewer than its cap,
counting the new ones taken before it in the same pass. So a sitemap of 100,000 entries on a site
with ``max_pages: 50`` puts 50 documents in the store whichever way they arrive; a deleted page
frees its place for a later run. Feeds are bounded per listing (``max_entries``, applied where the
feed is parsed) and files by their glob, so they have no cap here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Collection

from beam_jobs.metrics import count
from beam_jobs.sources import SiteSource
from model.contracts.ids import doc_id

LOG = logging.getLogger(__name__)


@dataclass
class Admission:
    """Which URLs of one source may enter the store in one pass (a crawl, a poll, a targeted run).

    Args:
        source: the source's name.
        cap: most documents it may hold (None: no cap).
        held: doc ids of the documents it holds in the store now (any container; not copied).
        stored: doc ids held by any source (a URL already stored elsewhere does not grow the store).
    """

    source: str
    cap: int | None
    held: Collection[str]
    stored: Collection[str] = ()
    taken: set[str] = field(default_factory=set)  # new doc ids admitted in this pass
    refused: int = 0

    @classmethod
    def of(cls, source, held: Collection[str] = (), stored: Collection[str] = ()) -> "Admission":
        """The admission of a configured source (a site's cap is its ``max_pages``)."""
        cap = source.max_pages if isinstance(source, SiteSource) else None
        return cls(source.name, cap, held, stored)

    @property
    def full(self) -> bool:
        return self.cap is not None and len(self.held) + len(self.taken) >= self.cap

    def admit(self, url: str, key: str | None = None) -> bool:
        """Whether ``url`` (whose doc id is ``key``, when known) may enter the store; a new one counts against the cap."""
        key = key or doc_id(url)
        if key in self.held or key in self.stored or key in self.taken:
            return True
        if self.full:
            self.refused += 1
            return False
        self.taken.add(key)
        return True

    @property
    def reason(self) -> str:
        """Why a new URL is refused (for answers that name it)."""
        return f"source {self.source!r} already holds {len(self.held) + len(self.taken)} documents (max_pages: {self.cap})"

    def report(self, what: str = "new URLs") -> None:
        """Log and count (``over_max_pages``) the URLs this pass refused, once."""
        if self.refused:
            count("over_max_pages", self.refused)
            LOG.warning("%s: %d %s not taken: %s", self.source, self.refused, what, self.reason)


def held_by_source(ledger) -> dict[str, set[str]]:
    """Doc ids by source name, from a ledger table (a ``pyarrow.Table`` with ``doc_id`` and ``source``)."""
    held: dict[str, set[str]] = {}
    for key, source in zip(ledger.column("doc_id").to_pylist(), ledger.column("source").to_pylist()):
        held.setdefault(source or "", set()).add(key)
    return held
