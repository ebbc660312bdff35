"""What a flow works on when its deployment leaves it out: ``RETROFRESH_*`` settings, read at run time."""

from __future__ import annotations

from dataclasses import dataclass, field


class MissingInput(ValueError):
    """A flow was started without a store or sources, and the environment does not name them."""


@dataclass(frozen=True)
class FlowInputs:
    """The store, sources, servers and reload token of one flow run."""

    store: str
    sources: str | None = None
    servers: list[str] = field(default_factory=list)
    token: str | None = field(default=None, repr=False)


def resolve_inputs(store: str | None, sources: str | None = None, servers: list[str] | None = None, *, need_sources: bool = False) -> FlowInputs:
    """Fill what the caller left out from :class:`model.contracts.settings.Settings` (the environment).

    Args:
        store: the store URI, or None for ``RETROFRESH_STORE``.
        sources: the sources file, or None for ``RETROFRESH_SOURCES``.
        servers: servers to notify, or None for ``RETROFRESH_SERVERS``.
        need_sources: raise when no sources file is known.

    Returns:
        The inputs, with the admin token from ``RETROFRESH_ADMIN_TOKEN`` (never a flow parameter,
        so it is not stored with flow runs).

    Raises:
        MissingInput: no store (or, when needed, no sources) anywhere.
    """
    from model.contracts.settings import get_settings

    settings = get_settings()
    store = store or settings.store
    if not store:
        raise MissingInput("no store given: pass store=... (--store) or set RETROFRESH_STORE to a directory or gs://bucket/prefix")
    sources = sources or settings.sources
    if need_sources and not sources:
        raise MissingInput("no sources given: pass sources=... (--sources) or set RETROFRESH_SOURCES to a sources YAML file")
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    return FlowInputs(str(store), str(sources) if sources else None, list(servers if servers is not None else settings.servers), token)
