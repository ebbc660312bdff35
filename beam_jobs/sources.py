"""The sources file (YAML) validated with pydantic; every error names the field and its line.

Example::

    fetch:                       # optional; defaults shown in FetchSettings
      crawl_delay_s: 1.0
    documents:                   # optional; per-document size limits (DocumentLimits)
      max_bytes: 1000000
      max_chunks: 4000
    max_delete_share: 0.5        # optional; a refresh never deletes more of one source (--max-delete-share)
    sources:
      - kind: site
        name: sample
        start_urls: ["http://127.0.0.1:8000/"]
        allow_networks: [127.0.0.0/8]   # private networks it may reach (never link-local/metadata)
        max_pages: 1000
      - kind: feed
        name: news
        url: "https://example.org/feed.xml"
      - kind: files
        name: archive
        glob: "gs://bucket/docs/*.jsonl"

Fields are only ever added (with defaults), so a file written for one version keeps working;
unknown fields are errors, so a typo never silently changes what is crawled.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated, Literal, Union
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from beam_jobs.netguard import LOOPBACK, AddressPolicy, allowed_network

LOG = logging.getLogger(__name__)

DEFAULT_USER_AGENT = "retrofresh/0.1 (+https://github.com/retrofresh/retrofresh; RETRO index refresher)"
DEFAULT_CONTENT_TYPES = ("text/html", "application/xhtml+xml", "text/plain", "text/markdown")

Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="unique source name")]


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL with a host, got {value!r}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FetchSettings(_Strict):
    """How politely and defensively every HTTP request is made (one block for all sources)."""

    user_agent: str = Field(DEFAULT_USER_AGENT, min_length=1)
    timeout_s: float = Field(10.0, gt=0, description="connect and per-read timeout")
    deadline_s: float = Field(60.0, gt=0, description="whole request, body included")
    max_bytes: int = Field(5_000_000, gt=0, description="largest body read; larger is failed_too_large")
    max_redirects: int = Field(5, ge=0)
    retries: int = Field(3, ge=0, description="extra attempts on 429, 5xx, timeouts, connection errors")
    backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles each attempt")
    max_backoff_s: float = Field(30.0, ge=0, description="cap on one retry delay (and on Retry-After)")
    crawl_delay_s: float = Field(1.0, ge=0, description="least gap between requests to one host")
    max_crawl_delay_s: float = Field(60.0, ge=0, description="cap on a robots.txt Crawl-delay")
    content_types: tuple[str, ...] = Field(DEFAULT_CONTENT_TYPES, min_length=1)

    @field_validator("content_types")
    @classmethod
    def _lower(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(v.strip().lower() for v in value)


class DocumentLimits(_Strict):
    """How large one document may be (a page's extracted text, a file, one .jsonl record).

    A larger document is counted ``failed_too_large`` before it is tokenised any further,
    chunked or embedded, and the version the store has of it is kept.
    """

    max_bytes: int = Field(1_000_000, gt=0, description="UTF-8 bytes of a document's text")
    max_chunks: int = Field(4_000, gt=0, description="64-token chunks of one document")


class _WebSource(_Strict):
    """What every source fetched over HTTP shares: the networks it may reach."""

    allow_networks: list[str] = Field(
        default_factory=list,
        description="private or loopback networks this source may reach besides the public internet, e.g. [127.0.0.0/8]; "
        "link-local, cloud metadata, multicast and reserved addresses are never allowed",
    )
    allow_private: bool = Field(False, description="deprecated: loopback only (127.0.0.0/8, ::1); list allow_networks instead")

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return [str(allowed_network(v)) for v in value]

    @property
    def address_policy(self) -> AddressPolicy:
        """Public addresses plus exactly ``allow_networks`` (``allow_private``: loopback)."""
        networks = tuple(allowed_network(v) for v in self.allow_networks)
        if self.allow_private:
            networks += tuple(n for n in LOOPBACK if n not in networks)
        return AddressPolicy(networks)

    @model_validator(mode="after")
    def _deprecated(self):
        if self.allow_private:
            LOG.warning(
                "source %s: allow_private now allows loopback only (127.0.0.0/8, ::1); name the networks "
                "it may reach in allow_networks instead, e.g. allow_networks: [127.0.0.0/8]",
                getattr(self, "name", "?"),
            )
        return self


class SiteSource(_WebSource):
    """A website: start URLs, sitemaps with lastmod, and links followed within limits."""

    kind: Literal["site"]
    name: Name
    start_urls: list[str] = Field(min_length=1)
    allowed_hosts: list[str] | None = Field(None, description="default: the hosts of start_urls")
    sitemaps: list[str] | None = Field(None, description="default: robots.txt Sitemap lines, else /sitemap.xml")
    use_sitemaps: bool = True
    trust_sitemap_lastmod: bool = Field(
        True, description="skip a known page whose sitemap lastmod is not newer than its Last-Modified"
    )
    follow_links: bool = True
    max_pages: int = Field(1000, gt=0)
    max_depth: int = Field(3, ge=0)
    crawl_delay_s: float | None = Field(None, ge=0, description="default: fetch.crawl_delay_s")

    @field_validator("start_urls", "sitemaps")
    @classmethod
    def _urls(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_http_url(v) for v in value]

    @property
    def hosts(self) -> frozenset[str]:
        if self.allowed_hosts:
            return frozenset(h.lower() for h in self.allowed_hosts)
        return frozenset((urlsplit(u).hostname or "").lower() for u in self.start_urls)


class FeedSource(_WebSource):
    """An RSS or Atom feed: each entry's link is a document, dated by the entry."""

    kind: Literal["feed"]
    name: Name
    url: str
    max_entries: int = Field(1000, gt=0)
    crawl_delay_s: float | None = Field(None, ge=0, description="default: fetch.crawl_delay_s")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)


class FilesSource(_Strict):
    """Files matched by a local or gs:// glob: .txt, .md, .html, or .jsonl (one document a line).

    The glob has Beam's filesystem semantics, the same for local paths and gs:// URIs: ``*`` is
    any run of characters within one path segment, ``**`` any run across segments, ``?`` any one
    character, ``[...]`` a character class. :meth:`holds` is that rule and :meth:`listing` keeps
    only what it accepts, so what a crawl lists and what a change event may name are one set.
    """

    kind: Literal["files"]
    name: Name
    glob: str = Field(min_length=1)
    max_file_bytes: int = Field(200_000_000, gt=0, description="larger files are failed_too_large")

    def holds(self, path: str) -> bool:
        """Whether ``path`` (as the listing spells it: absolute, or gs://bucket/key) is the glob's.

        Beam's ``FileSystems.match`` filters what it lists with ``FileSystem.translate_pattern``
        (a pattern ending in "/" gets a "*"); this is that rule, so a path this accepts is one the
        listing would show if it existed, and no other. (``fnmatch`` would let ``*`` cross "/";
        Python's own ``glob.translate`` arrives only in 3.13 and spells ``**`` differently.)
        """
        from apache_beam.io.filesystem import FileSystem

        pattern = self.glob + "*" if self.glob.endswith(("/", "\\")) else self.glob
        return re.match(FileSystem.translate_pattern(pattern), path) is not None

    def listing(self) -> list:
        """The files the glob names now, by path: Beam ``FileMetadata`` (path, size, mtime).

        Raises:
            Exception: the listing failed (BeamIOError, auth or network errors): it is unknown.
        """
        from apache_beam.io.filesystems import FileSystems

        found = FileSystems.match([self.glob])[0].metadata_list
        return sorted((meta for meta in found if self.holds(meta.path)), key=lambda meta: meta.path)


Source = Annotated[Union[SiteSource, FeedSource, FilesSource], Field(discriminator="kind")]


class SourcesConfig(_Strict):
    """Everything one ingest run reads from: the sources plus the shared fetch policy."""

    sources: list[Source] = Field(min_length=1)
    fetch: FetchSettings = FetchSettings()
    documents: DocumentLimits = DocumentLimits()
    max_delete_share: float = Field(
        0.5, ge=0.0, le=1.0,
        description="the largest share of one source's documents a refresh may delete (flows/tasks/deletions.py)",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> "SourcesConfig":
        seen: set[str] = set()
        for source in self.sources:
            if source.name in seen:
                raise ValueError(f"source name {source.name!r} is used twice; names must be unique")
            seen.add(source.name)
        return self

    def source(self, name: str) -> SiteSource | FeedSource | FilesSource:
        for source in self.sources:
            if source.name == name:
                return source
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]

    @classmethod
    def from_yaml(cls, text: str, origin: str = "<sources>") -> "SourcesConfig":
        """Parse and validate YAML text.

        Args:
            text: the YAML document.
            origin: file name used in error messages.

        Returns:
            The validated configuration.

        Raises:
            SourcesError: YAML syntax or validation errors, each with its line and field.
        """
        try:
            data = yaml.safe_load(text)
            root = yaml.compose(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{origin}:{mark.line + 1}" if mark is not None else origin
            raise SourcesError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
        if not isinstance(data, dict):
            raise SourcesError(f"{origin}:1: expected a mapping with a 'sources' list, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            lines = [_describe(error, root, origin) for error in exc.errors()]
            raise SourcesError("invalid sources file:\n  " + "\n  ".join(lines)) from exc


class SourcesError(ValueError):
    """The sources file is not valid YAML or does not match SourcesConfig."""


def load_sources(path: str | Path) -> SourcesConfig:
    """Read and validate a sources YAML file.

    Args:
        path: a local file.

    Returns:
        The validated SourcesConfig.

    Raises:
        SourcesError: the file is missing, is not YAML, or fails validation (message names the
            field and line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SourcesError(f"cannot read sources file {path}: {exc.strerror or exc}") from exc
    return SourcesConfig.from_yaml(text, origin=str(path))


def _describe(error: dict, root: yaml.Node | None, origin: str) -> str:
    """'file:line: sources[0].max_pages: message (got ...)' for one pydantic error."""
    node, path = root, ""
    for part in error["loc"]:
        child = _child(node, part)
        if child is None:
            # A discriminator tag ('site') or a missing key: stay on the enclosing node.
            if isinstance(part, str) and part in ("site", "feed", "files") and isinstance(node, yaml.MappingNode):
                continue
            path += f".{part}" if isinstance(part, str) else f"[{part}]"
            continue
        node = child
        path += f".{part}" if isinstance(part, str) else f"[{part}]"
    line = node.start_mark.line + 1 if node is not None else 1
    got = error.get("input")
    got_text = "" if error["type"] == "missing" or isinstance(got, (dict, list)) else f" (got {got!r})"
    return f"{origin}:{line}: {path.lstrip('.') or '<root>'}: {error['msg']}{got_text}"


def _child(node: yaml.Node | None, part) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        for key, value in node.value:
            if key.value == part:
                return value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        return node.value[part]
    return None
