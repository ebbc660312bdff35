"""The training documents of a temporal evaluation's frozen model and of its retrained control.

The index versions it evaluates against are laid down with
:func:`model.store.documents.publish_documents`.
"""

from __future__ import annotations

from typing import Iterable


# A stale document that the fresh version holds under the same URL with another text is kept in the
# retrained control's data under this query, so both texts are in it.
STALE_COPY_QUERY = "edition=stale"


def training_documents(
    stale: dict[str, str], fresh: dict[str, str], extra: dict[str, str] | None = None, *, held_out: Iterable[str] = ()
) -> tuple[dict[str, str], dict[str, str]]:
    """The training documents of a model frozen at the cutoff, and of the retrained control.

    Args:
        stale: the stale version's documents, url -> text.
        fresh: the fresh version's documents (which may replace stale ones under the same URL).
        extra: more pre-cutoff text to train on (not indexed for evaluation).
        held_out: URLs of the evaluated documents.

    Returns:
        ``(train, retrain)``: the stale documents plus ``extra``; and those plus the fresh
        version's, i.e. "trained with the fresh data too", never the fresh edition alone.

    Raises:
        ValueError: an evaluated document would be trained on.
    """
    stale_kept = {}
    for url, text in stale.items():
        if fresh.get(url, text) != text:
            url += ("&" if "?" in url else "?") + STALE_COPY_QUERY
        stale_kept[url] = text
    train = {**stale_kept, **(extra or {})}
    retrain = {**fresh, **train}
    leaked = set(held_out) & (train.keys() | retrain.keys())
    if leaked:
        raise ValueError(f"{len(leaked)} evaluated documents are in the training data, e.g. {sorted(leaked)[0]}")
    return train, retrain
