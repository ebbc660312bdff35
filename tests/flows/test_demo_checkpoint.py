"""The shipped demo checkpoint: small, loadable, and made for the store's tokenizer and embedder."""

from flows.demo import SHIPPED_CHECKPOINT
from model.contracts.embedder import Embedder, EmbedderSpec
from model.contracts.tokenizer import RetroTokenizer
from model.network.checkpoint import load_checkpoint
from model.network.retro import Retro


def test_the_shipped_checkpoint_loads_and_matches_what_the_demo_store_is_made_with():
    files = {path.name: path.stat().st_size for path in SHIPPED_CHECKPOINT.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    assert sum(files.values()) <= 20 * 2**20  # the bound for a checkpoint in the repository
    model, tokenizer = load_checkpoint(SHIPPED_CHECKPOINT)
    assert isinstance(model, Retro) and not model.training
    # An ingest chunks with the bundled tokenizer and embeds with the bundled encoder.
    assert tokenizer.sha256 == RetroTokenizer.load(None).sha256 == model.config.tokenizer["sha256"]
    assert EmbedderSpec.from_dict(model.config.embedder) == Embedder(None).spec
    assert model.config.chunk_tokens == 64 and model.config.k == 2
