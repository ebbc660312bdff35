"""Checkpoint directories: load a model with its tokenizer; save and restore optimizer state without pickle."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from model.contracts.compat import Compatibility, TokenizerInfo
from model.contracts.tokenizer import TOKENIZER_FILE, RetroTokenizer
from model.network.retro import MODEL_TYPE, WEIGHTS_FILE, Retro, load_config_json

LOG = logging.getLogger(__name__)

TRAINING_STATE_TENSORS = "training_state.safetensors"
TRAINING_STATE_JSON = "training_state.json"


def checkpoint_model_type(directory: str | Path) -> str:
    """The ``model_type`` recorded in a checkpoint's config.json."""
    return load_config_json(directory).get("model_type", "")


def load_tokenizer_for(directory: str | Path, expected: TokenizerInfo | dict | None) -> RetroTokenizer:
    """The tokenizer saved in a checkpoint (or the shipped default), checked against the config's stamp.

    Raises:
        model.contracts.compat.Incompatible: (a ValueError) the tokenizer found is not the one recorded.
    """
    directory = Path(directory)
    saved = (directory / TOKENIZER_FILE).exists()
    tokenizer = RetroTokenizer.load(directory if saved else None)
    found = f"the tokenizer in {directory}" if saved else "the shipped default tokenizer"
    Compatibility.of(tokenizer=tokenizer, source=found, kind="run").check(
        Compatibility.of(tokenizer=expected, source=f"checkpoint {directory}", kind="model"), terms=("tokenizer",),
        fix="save the checkpoint with its tokenizer",
    )
    return tokenizer


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu"):
    """Load a checkpoint directory: a RETRO model (or a RETRO-fitted HF model) and its tokenizer.

    Args:
        directory: written by ``save_pretrained``.
        device: where to put the weights.

    Returns:
        ``(model, tokenizer)``, the model in eval mode.

    Raises:
        FileNotFoundError: no ``config.json`` or weights.
        ValueError: a file that cannot be read as what it should be (named in the message), such as
            a truncated ``model.safetensors``, or another model type or tokenizer.
    """
    from safetensors import SafetensorError

    model_type = checkpoint_model_type(directory)
    try:
        if model_type == MODEL_TYPE:
            model = Retro.from_pretrained(directory, device=device)
        else:
            from model.network.retrofit import RetroFit

            _check_model_type(directory, model_type)
            model = RetroFit.from_pretrained(directory, device=device)
    except SafetensorError as exc:
        raise _damaged_weights(directory, exc) from None
    return model, load_tokenizer_for(directory, model.config.tokenizer)


def check_checkpoint(directory: str | Path) -> dict:
    """Check a checkpoint as far as that takes no weights: config.json, its model type and format,
    and that model.safetensors is whole (its header, and a size that covers every tensor it lists).

    Milliseconds, where loading takes seconds: for commands that load the model only later.

    Returns:
        config.json's fields.

    Raises:
        FileNotFoundError: not a checkpoint directory (no config.json or weights).
        ValueError: a damaged file or another model type, named in the message.
    """
    from safetensors import SafetensorError, safe_open

    from model.network.retro import read_config

    model_type = checkpoint_model_type(directory)
    _check_model_type(directory, model_type)
    data = read_config(Path(directory), model_type)
    try:
        with safe_open(str(Path(directory) / WEIGHTS_FILE), framework="pt") as weights:
            weights.keys()
    except SafetensorError as exc:
        raise _damaged_weights(directory, exc) from None
    return {"model_type": model_type, **data}


def _check_model_type(directory: str | Path, model_type: str) -> None:
    from model.network.retrofit import MODEL_TYPE as RETROFIT_TYPE

    if model_type not in (MODEL_TYPE, RETROFIT_TYPE):
        raise ValueError(f"{directory} holds model_type {model_type!r}; expected {MODEL_TYPE!r} or {RETROFIT_TYPE!r}")


def _damaged_weights(directory: str | Path, exc: Exception) -> ValueError:
    return ValueError(f"{Path(directory) / WEIGHTS_FILE} is damaged or truncated ({exc}); copy the checkpoint again or save the model anew")


def save_training_state(directory: str | Path, optimizer: torch.optim.Optimizer, *, step: int, extra: dict | None = None) -> None:
    """Write optimizer state beside a checkpoint: tensors as safetensors, the rest as JSON.

    Args:
        directory: the checkpoint directory.
        optimizer: its ``state_dict()`` is saved.
        step: optimizer steps taken so far.
        extra: JSON-serialisable notes (training config, data hash).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, slots in state["state"].items():
        for name, value in slots.items():
            key = f"state.{idx}.{name}"
            if torch.is_tensor(value):
                tensors[key] = value.detach().contiguous().cpu()
            else:
                scalars[key] = value
    save_file(tensors, str(directory / TRAINING_STATE_TENSORS))
    meta = {"step": step, "param_groups": state["param_groups"], "scalars": scalars, "extra": extra or {}}
    (directory / TRAINING_STATE_JSON).write_text(json.dumps(meta, indent=2))


def load_training_state(directory: str | Path, optimizer: torch.optim.Optimizer) -> tuple[int, dict]:
    """Restore what :func:`save_training_state` wrote into ``optimizer``.

    Returns:
        ``(step, extra)``.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    meta_file = directory / TRAINING_STATE_JSON
    if not meta_file.exists():
        raise FileNotFoundError(f"{directory} has no {TRAINING_STATE_JSON}: nothing to resume from")
    meta = json.loads(meta_file.read_text())
    tensors = load_file(str(directory / TRAINING_STATE_TENSORS))
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["step"]), meta.get("extra", {})
