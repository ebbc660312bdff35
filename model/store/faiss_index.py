"""Choosing, training, building and loading the FAISS index of a shard.

Small shards get an exact ``IDMap2,Flat`` index. Shards of at least ``IndexPolicy.flat_max``
chunks get ``IVF{nlist},{codec}``, cloned from the trained, empty index of their lineage
(``trained/<lineage>.faiss``), so every shard of a lineage shares one coarse quantizer and
compaction can ``merge_from`` them. Keys are L2-normalised, so inner product is cosine.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from model.store.errors import IncompatibleIndex, StoreError

LOG = logging.getLogger(__name__)

FLAT_FACTORY = "IDMap2,Flat"


@dataclass(frozen=True)
class IndexPolicy:
    """How shards are indexed.

    Attributes:
        flat_max: shards with fewer chunks get an exact flat index (search cost grows with size).
        codec: how IVF lists store vectors. ``SQ8`` (default): one byte per dimension, 4x less
            memory and memory traffic than ``Flat`` (exact float32), recall@2 ~0.98 of exact on
            clustered 384-d keys; scores are approximate to about 1e-2. IVF scanning is bound by
            memory bandwidth, so the smaller codes are also what makes it 20x+ faster than exact.
        nlist: coarse centroids of a new lineage; None: a power of two near 4·sqrt(expected size),
            the low end of FAISS's guidance, so training stays affordable on a CPU.
        train_points_per_list: training vectors per centroid (FAISS wants at least 39; k-means
            time grows with points x centroids).
        seed: k-means seed, so a lineage trained twice on the same sample is the same.
    """

    flat_max: int = 20_000
    codec: str = "SQ8"
    nlist: int | None = None
    train_points_per_list: int = 40
    seed: int = 1234

    def nlist_for(self, expected: int, available: int) -> int:
        """Centroids for a lineage expected to hold ``expected`` vectors, trained on ``available``."""
        want = self.nlist or 2 ** round(math.log2(max(1.0, 4 * math.sqrt(max(expected, 1)))))
        return int(max(1, min(want, available // 39)))


def is_flat(factory: str) -> bool:
    return not factory.startswith("IVF")


def check_vectors(
    embeddings: np.ndarray,
    *,
    dim: int,
    rows: int | None = None,
    normalized: bool = True,
    what: str = "embeddings",
    error: type[Exception] = StoreError,
) -> np.ndarray:
    """Validate keys or queries: 2-d, the right width, finite, unit length when the embedder normalises.

    Args:
        embeddings: array of shape (n, dim).
        dim: the embedder's dimension.
        rows: the number of rows expected (the number of chunks), if known.
        normalized: require L2 norms of 1 (the embedder spec's ``normalize``).
        what: what the rows are, for the messages ("embeddings", "queries").
        error: the exception to raise (a search's bad queries are a ``ValueError``).

    Returns:
        A C-contiguous float32 copy or view.

    Raises:
        StoreError (or ``error``): shape, dtype, non-finite values or norms are wrong.
    """
    if not isinstance(embeddings, np.ndarray):
        raise error(f"{what} must be a numpy array, got {type(embeddings).__name__}")
    if embeddings.ndim != 2 or embeddings.shape[1] != dim:
        raise error(f"{what} have shape {embeddings.shape}; expected (n, {dim}) from the embedder that made the index")
    if rows is not None and embeddings.shape[0] != rows:
        raise error(f"{embeddings.shape[0]} {what} for {rows} chunks; pass one row per chunk, in chunk order")
    if not np.issubdtype(embeddings.dtype, np.floating):
        raise error(f"{what} have dtype {embeddings.dtype}; expected float32")
    out = np.ascontiguousarray(embeddings, dtype=np.float32)
    if not np.isfinite(out).all():
        raise error(f"{what} contain NaN or infinite values")
    if normalized and len(out):
        norms = np.linalg.norm(out, axis=1)
        worst = int(np.argmax(np.abs(norms - 1)))
        if abs(norms[worst] - 1) > 1e-3:
            raise error(
                f"row {worst} of the {what} has L2 norm {norms[worst]:.4f}, but the embedder spec says normalize=True; "
                "embed with model.contracts.embedder.Embedder (or L2-normalise) so keys and queries match"
            )
    return out


def train_ivf(sample: np.ndarray, *, policy: IndexPolicy, expected: int | None = None) -> faiss.Index:
    """Train an empty IVF index (the coarse quantizer of a new lineage).

    Args:
        sample: training vectors (n, dim), L2-normalised; a random subset is used if larger than needed.
        policy: index policy (codec, nlist, seed).
        expected: vectors the lineage is expected to hold; default ``len(sample)``.

    Returns:
        A trained index with no vectors.
    """
    n, dim = sample.shape
    nlist = policy.nlist_for(expected or n, n)
    if nlist < 1 or n < nlist:
        raise StoreError(f"cannot train an IVF index on {n} vectors; give at least {39 * max(nlist, 1)}")
    take = min(n, nlist * policy.train_points_per_list)
    if take < n:
        rng = np.random.default_rng(policy.seed)
        sample = sample[np.sort(rng.choice(n, take, replace=False))]
    index = faiss.index_factory(dim, f"IVF{nlist},{policy.codec}", faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = policy.seed
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    LOG.info("trained IVF%d,%s on %d vectors (dim %d)", nlist, policy.codec, take, dim)
    return index


def factory_of(index: faiss.Index) -> str:
    """A factory-style description of an index (what manifests and shard.json record)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap2) or isinstance(index, faiss.IndexIDMap):
        return FLAT_FACTORY
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    if isinstance(ivf, faiss.IndexIVFFlat):
        codec = "Flat"
    elif isinstance(ivf, faiss.IndexIVFScalarQuantizer):
        codec = {faiss.ScalarQuantizer.QT_8bit: "SQ8", faiss.ScalarQuantizer.QT_fp16: "SQfp16"}.get(ivf.sq.qtype, "SQ")
    elif isinstance(ivf, faiss.IndexIVFPQ):
        codec = f"PQ{ivf.pq.M}"
    else:
        codec = type(ivf).__name__
    return f"IVF{ivf.nlist},{codec}"


def build_flat(vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    """An exact inner-product index whose ids are chunk ids."""
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
    if len(ids):
        index.add_with_ids(vectors, ids.astype(np.int64))
    return index


def build_ivf(trained: faiss.Index, vectors: np.ndarray, ids: np.ndarray) -> faiss.Index:
    """Add vectors to a copy of a lineage's trained, empty IVF index."""
    if trained.d != vectors.shape[1]:
        raise IncompatibleIndex(f"the lineage's quantizer has dim {trained.d}, the vectors {vectors.shape[1]}")
    index = faiss.clone_index(trained)
    ivf = faiss.extract_index_ivf(index)
    if ivf.ntotal:
        raise StoreError("a lineage's trained index must be empty")
    # No direct map: a hash table of every id would sit in each server's anonymous memory (~45
    # bytes a chunk); compaction removes ids by scanning the lists instead.
    ivf.set_direct_map_type(faiss.DirectMap.NoMap)
    if len(ids):
        index.add_with_ids(vectors, ids.astype(np.int64))
    return index


def write(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def read_mapped(path: Path, factory: str) -> faiss.Index:
    """Open an index file memory-mapped and read-only (never add to it: FAISS would abort).

    Flat indexes map their codes in place (``IO_FLAG_MMAP_IFC``); IVF indexes map their inverted
    lists (``IO_FLAG_MMAP``). The two flags cannot be combined for IVF files.

    Shards written before direct maps were dropped carry a hash table of their ids; searching
    never uses it, so it is released at once (it would cost ~45 bytes of anonymous memory a chunk).
    """
    flag = faiss.IO_FLAG_MMAP_IFC if is_flat(factory) else faiss.IO_FLAG_MMAP
    index = faiss.read_index(str(path), flag | faiss.IO_FLAG_READ_ONLY)
    if not is_flat(factory):
        drop_direct_map(index)
    return index


def drop_direct_map(index: faiss.Index) -> None:
    """Release an IVF index's id -> list direct map (``merge_from`` and serving need none)."""
    ivf = faiss.extract_index_ivf(index)
    if ivf.direct_map.type != faiss.DirectMap.NoMap:
        ivf.set_direct_map_type(faiss.DirectMap.NoMap)


# Scalar quantizer types that round each component to one of L equal steps over its trained range.
_SQ_STEPS = {faiss.ScalarQuantizer.QT_8bit: 255, faiss.ScalarQuantizer.QT_6bit: 63, faiss.ScalarQuantizer.QT_4bit: 15,
             faiss.ScalarQuantizer.QT_8bit_uniform: 255, faiss.ScalarQuantizer.QT_4bit_uniform: 15}


def score_error_std(index: faiss.Index, queries: np.ndarray) -> np.ndarray:
    """Per query, the standard deviation of the error an index's codes add to inner products with it.

    Search ranks by ``q . x^`` (the decoded key), not ``q . x``. A scalar quantizer rounds each
    component of ``x`` (of its residual, for IVF) to the middle of one of L steps of width
    ``vdiff_d / L`` over the component's trained range: an error uniform over the step, variance
    ``step_d^2 / 12``, independent across components. So ``q . (x - x^)`` has variance
    ``sum_d q_d^2 step_d^2 / 12``. Exact codes (flat, IVF-Flat) add none; half-precision codes
    (SQfp16, ~1e-3 of each component) are counted as none too.

    Args:
        index: a shard's index.
        queries: float32 (n, dim).

    Returns:
        float64 (n,).

    Raises:
        StoreError: a codec whose error is not modelled here (PQ).
    """
    queries = np.asarray(queries, dtype=np.float64)
    index = faiss.downcast_index(index)
    if isinstance(index, (faiss.IndexIDMap2, faiss.IndexIDMap, faiss.IndexFlat)):
        return np.zeros(len(queries))
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    if isinstance(ivf, faiss.IndexIVFFlat):
        return np.zeros(len(queries))
    if not isinstance(ivf, faiss.IndexIVFScalarQuantizer):
        raise StoreError(f"the score error of {factory_of(index)} codes is not modelled; recall tuning supports Flat and SQ codecs")
    steps = _SQ_STEPS.get(ivf.sq.qtype)
    if steps is None:
        return np.zeros(len(queries))
    trained = faiss.vector_to_array(ivf.sq.trained).astype(np.float64)
    vdiff = trained[ivf.d :] if len(trained) == 2 * ivf.d else np.full(ivf.d, trained[1])
    return np.sqrt((queries**2) @ ((vdiff / steps) ** 2 / 12.0))


def centroids(quantizer: faiss.Index) -> np.ndarray | None:
    """A view of a coarse quantizer's centroids, (nlist, dim); None when it is not a flat index."""
    quantizer = faiss.downcast_index(quantizer)
    if not isinstance(quantizer, faiss.IndexFlat):
        return None
    return faiss.rev_swig_ptr(quantizer.get_xb(), quantizer.ntotal * quantizer.d).reshape(quantizer.ntotal, quantizer.d)


def coarse_quantizer(index: faiss.Index) -> faiss.Index:
    """An IVF index's coarse quantizer (a proxy that does not own it)."""
    return faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)


def copy_quantizer(quantizer: faiss.Index) -> faiss.Index:
    """A flat quantizer with the same centroids, owned by the returned Python object."""
    quantizer = faiss.downcast_index(quantizer)
    copy = faiss.IndexFlat(quantizer.d, quantizer.metric_type)
    copy.add(centroids(quantizer))
    return copy


def share_quantizer(index: faiss.Index, shared: faiss.Index):
    """Make an IVF index search through ``shared`` (equal centroids) and free its own copy's centroids.

    The index's own quantizer object stays, emptied, and the index no longer frees its quantizer;
    the returned function undoes both (call it before dropping the index, so the index frees its
    own, empty quantizer and never ``shared``). Keep ``shared`` alive as long as the index.
    """
    ivf = faiss.extract_index_ivf(index)
    own = faiss.downcast_index(ivf.quantizer)
    owned = bool(ivf.own_fields)
    ivf.quantizer = shared
    ivf.own_fields = False
    own.reset()
    storage = faiss.UInt8Vector()
    own.codes.owned_data.swap(storage)  # the centroids' buffer leaves with `storage`: freed now
    del storage

    def restore() -> None:
        ivf.quantizer = own
        ivf.own_fields = owned

    return restore


def read_writable(path: Path) -> faiss.Index:
    """Read an index fully into memory (for compaction, which modifies it)."""
    return faiss.read_index(str(path))


def search_params(index: faiss.Index, *, nprobe: int, selector=None):
    """FAISS search parameters for one shard: nprobe for IVF, and an optional id selector."""
    if isinstance(faiss.downcast_index(index), (faiss.IndexIDMap2, faiss.IndexIDMap)):
        return faiss.SearchParameters(sel=selector) if selector is not None else None
    params = faiss.SearchParametersIVF(nprobe=nprobe)
    if selector is not None:
        params.sel = selector
    return params


def id_map(index: faiss.Index) -> np.ndarray:
    """The chunk ids stored in an index, in storage order (flat) or in any order (IVF)."""
    index = faiss.downcast_index(index)
    if isinstance(index, (faiss.IndexIDMap2, faiss.IndexIDMap)):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    ivf = faiss.extract_index_ivf(index)
    invlists = ivf.invlists
    parts = []
    for list_no in range(ivf.nlist):
        size = invlists.list_size(list_no)
        if size:
            parts.append(faiss.rev_swig_ptr(invlists.get_ids(list_no), size).copy())
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def flat_vectors(index: faiss.Index) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, ids) of an ``IDMap2,Flat`` index, in storage order."""
    index = faiss.downcast_index(index)
    inner = faiss.downcast_index(index.index)
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    vectors = inner.reconstruct_n(0, inner.ntotal) if inner.ntotal else np.empty((0, index.d), np.float32)
    return vectors, ids
