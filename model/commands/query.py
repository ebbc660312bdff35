"""``retrofresh query``: ask a running server to retrieve or generate (no torch, no faiss)."""

from __future__ import annotations

import json

import click

from model.commands.formatting import one_line
from model.contracts.settings import Settings


@click.command()
@click.argument("text")
@click.option("--url", "urls", multiple=True, help="server base URL; repeat it for replicas to fail over between [default: http://RETROFRESH_HOST:RETROFRESH_PORT].")
@click.option("--retrieve-only", is_flag=True, help="only retrieve neighbours, do not generate.")
@click.option("-k", "k", type=click.IntRange(min=1), help="neighbours per query chunk.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0.0), default=1.0, show_default=True)
@click.option("--seed", type=click.IntRange(min=0))
@click.option("--no-retrieval", is_flag=True, help="generate without neighbours.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="seconds to wait for the answer.")
@click.option("--json", "as_json", is_flag=True, help="print the server's JSON answer.")
def query(text: str, urls: tuple[str, ...], retrieve_only: bool, k: int | None, max_new_tokens: int, temperature: float,
          seed: int | None, no_retrieval: bool, timeout: float, as_json: bool) -> None:
    """Send TEXT to a running server: generate a continuation, or with --retrieve-only list its neighbours."""
    from model.client import RetroClient, RetroError

    if not urls:
        settings = Settings()
        urls = (f"http://{settings.host}:{settings.port}",)
    try:
        with RetroClient(list(urls), timeout=timeout) as client:
            if retrieve_only:
                answer = client.retrieve(text, k=k or 2)
            else:
                answer = client.generate(
                    text, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, retrieval=not no_retrieval, k=k
                )
    except RetroError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(answer.model_dump(mode="json"), indent=2))
        return
    if retrieve_only:
        click.echo(f"index version {answer.index_version}")
        for rank, hit in enumerate(answer.results[0], 1):
            click.echo(f"{rank}. [{hit.score:.3f}] {hit.url}\n   {one_line(hit.text)}")
        return
    click.echo(answer.text)
    source = f"index version {answer.index_version}" if answer.retrieval else (answer.note or "retrieval off")
    click.echo(f"\n-- {answer.generated_tokens} tokens, {source}", err=True)
    for i, chunk in enumerate(answer.neighbours):
        for hit in chunk:
            click.echo(f"   chunk {i}: [{hit.score:.3f}] {hit.url}", err=True)
