"""Benchmark the index store: recall@2 and speed against exact search, compaction against a rebuild, publish time.

    python -m bench.index [--quick] [--json]

The corpus is clustered, never uniform (uniform random vectors have no neighbourhood structure and
make every approximate index look broken): topics, each a random low-dimensional subspace around a
centre, plus isotropic noise, L2-normalised, like sentence embeddings. It arrives as SHARDS delta
shards of one IVF lineage; 1% of the chunks are then deleted. Measured, in one run:

- exact: ``IndexFlatIP`` over the live vectors (the reference for recall and speed);
- the published multi-shard version, searched through ``IndexView``;
- compaction of that version into one shard, and the compacted version searched the same way;
- a full rebuild of the live vectors (train a quantizer, add everything, write the shard), and
  the cheapest rebuild (reuse the lineage's quantizer: add everything, write the shard);
- publish (verify every sha256, then swap CURRENT) of the compacted version;
- recall tuning as a refresh's validation does it (``store.tune``, target RECALL_TARGET): the
  headline recall and speedup are at the tuned nprobe, measured against exact float search.

Writes bench/results/index.json (``--quick``: bench/results/index-quick.json) and prints it.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, machine, write_result

# knobs
FULL_N = 1_000_000  # vectors in full mode
QUICK_N = 200_000  # vectors with --quick
DIM = 384  # all-MiniLM-L6-v2's width
SHARDS = 8  # delta shards the corpus arrives in (one lineage)
DELETED = 0.01  # fraction of chunks tombstoned before compaction
QUERIES = 1000
K = 2
NPROBE = 8  # the manifest's search.nprobe before tuning (the store's default)
RECALL_TARGET = 0.95  # what validation tunes nprobe to (recall@2 against exact search, as the tuner estimates it)
SWEEP = (4, 8, 16, 32)  # nprobe values also measured on the compacted index
PER_TOPIC = 2000  # vectors per topic (cluster)
LATENT = 16  # dimensions of a topic's subspace
NOISE = 0.45  # isotropic noise per dimension (the subspace part has unit variance per dimension)
SEED = 0
REPEATS = 3  # searches are timed this many times (store and exact alternately); the fastest counts
RESULT = RESULTS / "index.json"  # full mode
QUICK_RESULTS = RESULTS / "index-quick.json"  # --quick: never overwrites the full result

LOG = logging.getLogger("bench.index")


def clustered(n: int, rng: np.random.Generator, centres: np.ndarray, bases: np.ndarray) -> np.ndarray:
    """n unit vectors: a topic centre, plus a point of the topic's subspace, plus noise."""
    topics = rng.integers(len(centres), size=n)
    out = np.empty((n, centres.shape[1]), np.float32)
    for t in np.unique(topics):
        rows = np.nonzero(topics == t)[0]
        z = rng.standard_normal((len(rows), bases.shape[1]), dtype=np.float32)
        out[rows] = centres[t] + 0.6 * (z @ bases[t]) / np.sqrt(bases.shape[1])
        out[rows] += NOISE * rng.standard_normal((len(rows), centres.shape[1]), dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def chunk_table(ids: np.ndarray):
    """Minimal chunk records for synthetic keys (the benchmark measures the index, not parquet)."""
    import pyarrow as pa

    from model.store import CHUNKS_SCHEMA

    n = len(ids)
    empty = pa.array([[]] * n, pa.list_(pa.int32()))
    return pa.table(
        {
            "chunk_id": ids,
            "doc_id": pa.array((ids // 8).astype(str)),
            "position": np.zeros(n, np.int32),
            "tokens": empty,
            "continuation": empty,
            "text": pa.array([""] * n),
            "url": pa.array([""] * n),
        },
        schema=CHUNKS_SCHEMA,
    )


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k found in the returned top-k."""
    return float(np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth)]))


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def best_of(repeats: int, fn, *args, **kwargs):
    """(result, fastest time) of several runs: the machine is shared, the minimum is the signal."""
    runs = [timed(fn, *args, **kwargs) for _ in range(repeats)]
    return runs[0][0], min(seconds for _, seconds in runs)


def head_to_head(repeats: int, a, b):
    """Time two searches alternately, so both see the same load; (result, fastest time) of each."""
    runs_a, runs_b = [], []
    for _ in range(repeats):
        runs_a.append(timed(a))
        runs_b.append(timed(b))
    return (runs_a[0][0], min(t for _, t in runs_a)), (runs_b[0][0], min(t for _, t in runs_b))


def view_ids(view, queries: np.ndarray) -> np.ndarray:
    hits = view.search(queries, K)
    return np.array([[n.chunk_id for n in h] + [-1] * (K - len(h)) for h in hits])


def run(n: int, workdir: Path) -> dict:
    import faiss

    from model.contracts.embedder import EmbedderSpec
    from model.store import IndexPolicy, Manifest, open_store

    rng = np.random.default_rng(SEED)
    topics = max(8, n // PER_TOPIC)
    centres = rng.standard_normal((topics, DIM), dtype=np.float32)
    bases = rng.standard_normal((topics, LATENT, DIM), dtype=np.float32)
    vectors = clustered(n, rng, centres, bases)
    queries = clustered(QUERIES, rng, centres, bases)
    ids = rng.choice(2**62, size=n, replace=False).astype(np.int64)
    spec = EmbedderSpec(name="bench-clustered", dim=DIM, sha256="0" * 64)
    tokenizer = {"name": "bench", "sha256": "0" * 64}
    # Every delta shard here is big enough for IVF (small deltas would be exact flat shards).
    policy = IndexPolicy(flat_max=min(50_000, n // SHARDS))
    store = open_store(workdir / "store", cache_dir=workdir / "cache", policy=policy)
    LOG.info("corpus: %d clustered vectors (%d topics), dim %d", n, topics, DIM)

    # ingest: one lineage, SHARDS delta shards, then deletions
    lineage, train_s = timed(store.train_lineage, vectors[rng.choice(n, min(n, 200_000), replace=False)],
                             embedder=spec, expected_count=n)
    shard_infos, write_s = [], 0.0
    for part in np.array_split(np.arange(n), SHARDS):
        info, seconds = timed(store.write_shard, chunk_table(ids[part]), vectors[part], embedder=spec, lineage=lineage)
        shard_infos.append(info)
        write_s += seconds
    first = Manifest.next(None, version=store.new_version_id(), embedder=spec, tokenizer=tokenizer, add_shards=shard_infos,
                          tombstones=[], ledger=None, documents=n // 8, watermark=None, sources=["bench"],
                          search={"nprobe": NPROBE})
    store.publish(first, expected_current=None)
    deleted = rng.choice(n, int(n * DELETED), replace=False)
    second = Manifest.next(first, version=store.new_version_id(), embedder=spec, tokenizer=tokenizer, add_shards=[],
                           tombstones=ids[deleted].tolist(), ledger=None, documents=n // 8, watermark=None, sources=["bench"])
    store.publish(second, expected_current=first.version)
    LOG.info("trained lineage in %.1fs, wrote %d shards in %.1fs", train_s, SHARDS, write_s)

    # exact reference over the live vectors
    live = np.ones(n, bool)
    live[deleted] = False
    flat = faiss.IndexFlatIP(DIM)
    flat.add(vectors[live])
    truth = ids[live][flat.search(queries, K)[1]]

    with store.open() as view:
        view_ids(view, queries[:10])  # warm the memory maps
        (multi_ids, multi_s), (_, multi_flat_s) = head_to_head(REPEATS, lambda: view_ids(view, queries), lambda: flat.search(queries, K))
    LOG.info("%d-shard version: recall@%d %.3f, %.3fs (exact %.3fs)", SHARDS, K, recall(multi_ids, truth), multi_s, multi_flat_s)

    compacted, compaction_s = timed(store.compact)
    _, publish_s = timed(store.publish, compacted, expected_current=second.version)
    # Tune as validation does, and serve the tuned version (its search.nprobe).
    tuning = store.tune(target=RECALL_TARGET)
    tuned = compacted.retuned(version=store.new_version_id(), nprobe=tuning.nprobe, parent=compacted.version)
    store.publish(tuned, expected_current=compacted.version)
    nprobe = tuning.nprobe
    LOG.info("tuned nprobe %d -> %d (estimated recall@%d %.3f against exact search, %.1fs)", NPROBE, nprobe, K, tuning.recall, tuning.seconds)
    with store.open() as view:
        view_ids(view, queries[:10])
        (one_ids, one_s), (_, flat_s) = head_to_head(REPEATS, lambda: view_ids(view, queries), lambda: flat.search(queries, K))
        LOG.info("exact search: %.2fs for %d queries", flat_s, QUERIES)
        index = view._shards[0].index
        _, raw_s = best_of(REPEATS, index.search, queries, K, params=faiss.SearchParametersIVF(nprobe=nprobe))
        sweep = []  # the recall/speed trade-off a manifest's search.nprobe picks from
        for probes in sorted({*SWEEP, nprobe}):
            (_, found), seconds = best_of(REPEATS, index.search, queries, K, params=faiss.SearchParametersIVF(nprobe=probes))
            sweep.append({"nprobe": probes, "recall_at_2": round(recall(found, truth), 4), "raw_speedup_vs_flat": round(flat_s / seconds, 2)})
        # One thread each: per-core efficiency, far less sensitive to other load than 2 threads.
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        (_, ivf_1t), (_, flat_1t) = head_to_head(REPEATS, lambda: index.search(queries, K, params=params), lambda: flat.search(queries, K))
        faiss.omp_set_num_threads(threads)
    LOG.info("compacted in %.1fs, published in %.1fs; recall@%d %.3f, %.3fs", compaction_s, publish_s, K, recall(one_ids, truth), one_s)
    del flat

    # full rebuild of the same live chunks: train a new quantizer, add everything, write the shard
    rebuild_store = open_store(workdir / "rebuild", cache_dir=workdir / "cache", policy=policy)
    start = time.perf_counter()
    lineage2 = rebuild_store.train_lineage(vectors[live][rng.choice(int(live.sum()), min(int(live.sum()), 200_000), replace=False)],
                                           embedder=spec, expected_count=n)
    rebuild_store.write_shard(chunk_table(ids[live]), vectors[live], embedder=spec, lineage=lineage2)
    rebuild_s = time.perf_counter() - start
    # The cheapest rebuild: reuse the lineage's quantizer, only add and write.
    _, add_only_s = timed(store.write_shard, chunk_table(ids[live]), vectors[live], embedder=spec, lineage=lineage)
    LOG.info("full rebuild in %.1fs (%.1fs reusing the trained quantizer)", rebuild_s, add_only_s)

    return {
        "recall_at_2": round(recall(one_ids, truth), 4),
        "speedup_vs_flat": round(flat_s / one_s, 2),
        "compaction_vs_rebuild": round(compaction_s / rebuild_s, 3),
        "publish_s": round(publish_s, 3),
        "vectors": n,
        "live_vectors": int(live.sum()),
        "dim": DIM,
        "queries": QUERIES,
        "k": K,
        "index": compacted.shards[0].factory,
        "nprobe": nprobe,
        "nprobe_before_tuning": NPROBE,
        "tuning": tuning.summary(),
        "exact_qps": round(QUERIES / flat_s, 1),
        "store_qps": round(QUERIES / one_s, 1),
        "raw_faiss_speedup_vs_flat": round(flat_s / raw_s, 2),
        "raw_faiss_speedup_vs_flat_1_thread": round(flat_1t / ivf_1t, 2),
        "multi_shard": {"shards": SHARDS, "recall_at_2": round(recall(multi_ids, truth), 4), "speedup_vs_flat": round(multi_flat_s / multi_s, 2)},
        "nprobe_sweep": sweep,
        "compaction_s": round(compaction_s, 2),
        "rebuild_s": round(rebuild_s, 2),
        "rebuild_reusing_quantizer_s": round(add_only_s, 2),
        "train_s": round(train_s, 2),
        "write_shards_s": round(write_s, 2),
        "machine": machine(faiss_threads=faiss.omp_get_max_threads()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_N:,} vectors instead of {FULL_N:,}")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING if args.json else logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="bench-index-"))
    try:
        result = {"mode": "quick" if args.quick else "full"} | run(QUICK_N if args.quick else FULL_N, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    write_result(QUICK_RESULTS if args.quick else RESULT, result, as_json=args.json)


if __name__ == "__main__":
    main()
