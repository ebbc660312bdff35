"""``retrofresh watch`` (poll sources, announce changes, serve the webhook) and ``retrofresh notify URL...``.

Both emit ``retrofresh.source.changed`` Prefect events to the server ``PREFECT_API_URL`` names; the
``refresh-changed`` deployment (``retrofresh flows serve``, or ``prefect deploy`` of
infra/prefect/prefect.yaml) runs a targeted refresh on each.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

import click

LOG = logging.getLogger(__name__)


def _need_api() -> None:
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise click.ClickException(
            "no Prefect server to send events to: start one (prefect server start) and set PREFECT_API_URL, "
            "e.g. PREFECT_API_URL=http://127.0.0.1:4200/api"
        )


def _load(sources):
    from beam_jobs.sources import SourcesError, load_sources
    from model.contracts.settings import get_settings

    path = sources or get_settings().sources
    if not path:
        raise click.ClickException("no sources given: pass --sources FILE or set RETROFRESH_SOURCES")
    try:
        return load_sources(path)
    except SourcesError as error:
        raise click.ClickException(str(error)) from error


def _store(store):
    from model.contracts.settings import get_settings

    store = store or get_settings().store
    if not store:
        raise click.ClickException("no store given: pass --store URI or set RETROFRESH_STORE")
    return str(store)


def _listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}", param_hint="--listen")
    return host, int(port)


@click.command("watch")
@click.option("--sources", default=None, help="sources file (YAML) [env RETROFRESH_SOURCES]")
@click.option("--store", default=None, help="the index store whose published ledger says what is known [env RETROFRESH_STORE]")
@click.option("--interval", "interval_s", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="seconds between two polls of a source")
@click.option("--max-backoff", "max_backoff_s", type=click.FloatRange(min=1), default=300.0, show_default=True,
              help="longest wait before polling a source that is down again")
@click.option("--listen", default=None, metavar="HOST:PORT", help="also serve the webhook POST /v1/changed here (admin token required)")
@click.option("--once", is_flag=True, help="poll every source once, announce, and exit")
@click.option("--refresh-here", is_flag=True,
              help="run the targeted refreshes in this process instead of announcing events to the refresh-changed "
                   "deployment: the encoder stays loaded and no process starts per refresh (the fastest path)")
def watch(sources, store, interval_s, max_backoff_s, listen, once, refresh_here):
    """Poll feeds, sitemaps (lastmod) and files (mtime) for changes and announce them as Prefect events.

    Each batch of changed URLs becomes a `retrofresh.source.changed` event, which runs the
    `refresh-changed` deployment: a targeted refresh of only those URLs. With --refresh-here the
    watch runs those refreshes itself (still as Prefect flow runs). Runs until interrupted.
    """
    if not refresh_here:
        _need_api()
    config, store = _load(sources), _store(store)
    with contextlib.ExitStack() as stack:
        if refresh_here:  # its flow runs need an API: the configured one, or a temporary one that stops with us
            from flows.common.temporary_api import prefect_api

            stack.enter_context(prefect_api())
        _watch(config, store, sources=sources, interval_s=interval_s, max_backoff_s=max_backoff_s, listen=listen,
               once=once, refresh_here=refresh_here)


def _watch(config, store: str, *, sources, interval_s, max_backoff_s, listen, once, refresh_here) -> None:
    from flows.common.events import flush_events
    from flows.watch import LocalRefresher, Watcher

    refresher = None
    if refresh_here:
        from model.contracts.settings import get_settings

        refresher = LocalRefresher(str(sources or get_settings().sources), store).start()
    watcher = Watcher(config, store, interval_s=interval_s, max_backoff_s=max_backoff_s,
                      announce=refresher.announce if refresher else None)
    server = _start_webhook(config, store, listen, refresher) if listen else None
    click.echo(f"watching {len(config.sources)} sources of {store} every {interval_s:g} s"
               + (", refreshing here" if refresh_here else ", announcing to the refresh-changed deployment")
               + (f"; webhook at http://{listen}/v1/changed" if listen else ""), err=True)
    try:
        watcher.run(max_polls=1 if once else None)
        if once and refresher is not None:
            refresher.wait_idle()
            refresher.stop()
    except KeyboardInterrupt:
        pass
    finally:
        watcher.close()
        if server is not None:
            server.should_exit = True
        flush_events()


def _start_webhook(config, store: str, listen: str, refresher=None):
    import uvicorn

    from flows._webhook import create_webhook_app
    from model.contracts.settings import get_settings

    host, port = _listen(listen)
    settings = get_settings()
    token = settings.admin_token.get_secret_value() if settings.admin_token else None
    if not token:
        click.echo("warning: RETROFRESH_ADMIN_TOKEN is not set, so the webhook refuses every request (403)", err=True)
    announce = None
    if refresher is not None:
        def announce(source: str, urls: list[str]) -> int:
            refresher.submit(urls, origin=f"webhook ({source})")
            return 0

    app = create_webhook_app(config, store, token, announce=announce)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    server.install_signal_handlers = lambda: None  # the watch loop owns Ctrl-C
    threading.Thread(target=server.run, name="webhook", daemon=True).start()
    return server


@click.command("notify")
@click.argument("urls", nargs=-1, required=True)
@click.option("--sources", default=None, help="check the URLs against this sources file [env RETROFRESH_SOURCES]")
@click.option("--store", default=None, help="the store the change is for [env RETROFRESH_STORE]")
def notify(urls, sources, store):
    """Announce that URLS (pages or files of configured sources) changed: one Prefect event per batch.

    URLs that belong to no configured source are refused here, and again by the refresh.
    """
    from flows.common.events import ChangesNotDelivered, deliver_changes
    from flows._webhook import split_known

    _need_api()
    by_source, refused = split_known(_load(sources), list(urls))
    for url, why in refused:
        click.echo(f"refused {url}: {why}", err=True)
    if not by_source:
        raise click.ClickException("no URL belongs to a configured source; nothing announced")
    store = store or os.environ.get("RETROFRESH_STORE")
    announced = events = 0
    per_source = list(by_source.items())
    for position, (name, found) in enumerate(per_source):
        try:
            events += len(deliver_changes(found, source=name, origin="notify", store=store))
        except ChangesNotDelivered as error:
            announced += sum(len(event.payload["urls"]) for event in error.delivered)
            events += len(error.delivered)
            done = f"Announced {announced} URLs in {events} events before that. " if events else ""
            lost = error.urls + [url for _, left in per_source[position + 1:] for url in left]
            missing = " ".join(lost[:10]) + (f" and {len(lost) - 10} more" if len(lost) > 10 else "")
            raise click.ClickException(
                f"{error}. {done}Not announced: {missing}. Check that the Prefect server is up (prefect server start) "
                "and that PREFECT_API_URL names it, then run the same command again."
            ) from error
        announced += len(found)
    click.echo(f"announced {announced} URLs in {events} events")
