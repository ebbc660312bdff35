"""A loaded, searchable index version: memory-mapped shards, tombstones filtered, top-k merged.

The shards' data (index, chunk rows, ids) may be shared with other open versions
(:mod:`model.store.pool`); what belongs to one version is its tombstone filter per shard.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from model.contracts.retrieval import Neighbour
from model.store import faiss_index, layout, rows
from model.store.errors import StoreError
from model.store.manifest import Manifest, ShardInfo
from model.store.pool import QuantizerPool, ShardData, file_stamp, shared_ids
from model.store.rows import take as take_rows
from model.store.shards import ShardMeta

LOG = logging.getLogger(__name__)

POST_FILTER_MAX = 4096  # flat shards with at most this many hidden ids filter after searching


def load_shard_data(meta: ShardMeta, sha256: str, files: dict[str, Path], quantizers: QuantizerPool | None = None) -> ShardData:
    """Map one verified shard: its index read-only, its chunk rows (see :mod:`model.store.rows`).

    Args:
        meta: its ``shard.json``.
        sha256: the digest of ``shard.json`` (what manifests pin the shard by).
        files: verified local paths of ``index.faiss`` and the chunk file.
        quantizers: where IVF shards of one lineage share one coarse quantizer (None: each keeps its own).

    Returns:
        The shard's data, to be shared through :class:`model.store.pool.ShardPool`.
    """
    stamps = {name: file_stamp(path) for name, path in files.items()}  # before reading: a later rewrite shows
    index = faiss_index.read_mapped(files[layout.INDEX_FILE], meta.factory)
    table = rows.read(files[meta.chunks_file])
    if index.ntotal != meta.count or table.num_rows != meta.count:
        raise StoreError(f"shard {meta.id}: index holds {index.ntotal} and {meta.chunks_file} {table.num_rows} rows, shard.json says {meta.count}")
    if index.d != meta.dim:
        raise StoreError(f"shard {meta.id}: index dim {index.d} != shard.json dim {meta.dim}")
    ids = table.column("chunk_id").to_numpy()
    if len(ids) > 1 and not np.all(ids[1:] > ids[:-1]):
        # Written by this module, the table is sorted; sort here rather than trust a foreign one.
        order = np.argsort(ids, kind="stable")
        table, ids = table.take(pa.array(order)), ids[order]
    shared, unshare = (None, None)
    if quantizers is not None and not faiss_index.is_flat(meta.factory):
        shared, unshare = quantizers.share(meta.lineage, index)
    return ShardData(meta=meta, sha256=sha256, index=index, table=table, ids=ids, files=dict(files), stamps=stamps,
                     quantizer=shared, unshare=unshare)


@dataclass
class LoadedShard:
    """One shard as one version sees it: the shared data plus this version's tombstone filter."""

    data: ShardData
    info: ShardInfo
    hidden: np.ndarray  # sorted chunk ids of this shard that a tombstone hides
    params: Any = None  # faiss search parameters (nprobe, tombstone selector)
    selector: Any = None  # the tombstone filter inside FAISS (IVF), or None
    keep_alive: list = field(default_factory=list)  # selector objects params point to
    post_filter: bool = False  # hidden ids are fetched and dropped after searching (no selector)

    @property
    def meta(self) -> ShardMeta:
        return self.data.meta

    @property
    def index(self):
        return self.data.index

    @property
    def table(self) -> pa.Table:
        return self.data.table

    @property
    def ids(self) -> np.ndarray:
        return self.data.ids

    @property
    def live(self) -> int:
        return len(self.ids) - len(self.hidden)

    def is_live(self, ids: np.ndarray) -> np.ndarray:
        """Per id: does this shard hold it, unhidden?"""
        if not len(self.ids):
            return np.zeros(len(ids), bool)
        rows = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        held = self.ids[rows] == ids
        return held & ~np.isin(ids, self.hidden) if len(self.hidden) else held


def version_shard(data: ShardData, info: ShardInfo, *, tombstones: np.ndarray, nprobe: int) -> LoadedShard:
    """A shard's filter for one version: which of its ids the version's tombstones hide.

    Args:
        data: the shard (loaded now or shared with another open version).
        info: this version's manifest entry for it (``since`` says which tombstones apply).
        tombstones: the tombstones that apply to this shard (any order).
        nprobe: IVF lists to probe (the version's ``search.nprobe``).

    Returns:
        The shard as this version searches it.
    """
    ids = data.ids
    hidden = np.empty(0, np.int64)
    if len(tombstones) and len(ids):
        # Binary search of the (few) tombstones in the sorted ids: never a pass over the shard.
        wanted = np.unique(np.asarray(tombstones, np.int64))
        rows = np.minimum(np.searchsorted(ids, wanted), len(ids) - 1)
        hidden = wanted[ids[rows] == wanted]
    shard = LoadedShard(data, info, hidden)
    selector = None
    if faiss_index.is_flat(data.meta.factory) and len(hidden) <= POST_FILTER_MAX:
        # A selector pushes exact search off its BLAS path (~4x slower); fetching len(hidden)
        # more results costs almost nothing, so drop hidden ids afterwards instead.
        shard.post_filter = len(hidden) > 0
    elif len(hidden):
        # IVF: filter inside FAISS so each shard still returns its best k live chunks.
        batch = faiss.IDSelectorBatch(hidden)
        selector = faiss.IDSelectorNot(batch)
        shard.keep_alive = [batch, selector]
    shard.selector = selector
    shard.params = faiss_index.search_params(data.index, nprobe=nprobe, selector=selector)
    return shard


def _keys_at(shard: LoadedShard, positions: np.ndarray) -> tuple[list[int], list[np.ndarray]]:
    """(chunk ids, decoded keys) at storage positions of a shard (flat: rows; IVF: list by list)."""
    index = faiss.downcast_index(shard.index)
    if faiss_index.is_flat(shard.meta.factory):
        inner = faiss.downcast_index(index.index)
        id_map = faiss.vector_to_array(index.id_map)
        return [int(id_map[p]) for p in positions], [inner.reconstruct(int(p)) for p in positions]
    ivf = faiss.extract_index_ivf(index)
    sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)], np.int64)
    starts = np.cumsum(sizes) - sizes
    lists = np.searchsorted(starts, positions, side="right") - 1
    ids, keys = [], []
    for list_no, position in zip(lists, positions):
        offset = int(position - starts[list_no])
        key = np.empty(ivf.d, np.float32)
        ivf.reconstruct_from_offset(int(list_no), offset, faiss.swig_ptr(key))
        ids.append(int(ivf.invlists.get_single_id(int(list_no), offset)))
        keys.append(key)
    return ids, keys


def live_count(shards: Sequence[LoadedShard], overlap: Callable[[ShardData, ShardData], np.ndarray] = shared_ids) -> int:
    """Distinct live chunk ids across shards.

    A chunk id is normally held by one shard only: the count is every shard's live ids, less the
    repeats among the ids two shards share. Which ids two shards share never changes (shards are
    immutable), so ``overlap`` may remember it (:meth:`model.store.pool.ShardPool.overlap`): then a
    version that adds a delta costs the delta's lookups, not a pass over the big shards.
    """
    total = sum(shard.live for shard in shards)
    parts = [overlap(a.data, b.data) for i, a in enumerate(shards) for b in shards[i + 1 :]]
    repeated = np.unique(np.concatenate(parts)) if parts else np.empty(0, np.int64)
    if len(repeated):
        holders = np.sum([shard.is_live(repeated) for shard in shards], axis=0)
        total -= int(np.maximum(holders - 1, 0).sum())
    return total


class IndexView:
    """One loaded version of the index, safe to search from many threads.

    Built by :meth:`model.store.Store.open`; searching never changes it. ``close()`` waits for
    searches in flight, then releases its shards (``on_close``; a shard another open version
    shares stays mapped).

    Attributes:
        version: the version id.
        manifest: its manifest.
    """

    def __init__(self, manifest: Manifest, shards: list[LoadedShard], *, store_uri: str = "",
                 on_close: Callable[[], None] | None = None, shared: int = 0,
                 overlap: Callable[[ShardData, ShardData], np.ndarray] = shared_ids):
        self.manifest = manifest
        self.version = manifest.version
        self.store_uri = store_uri
        self.shared = shared  # shards taken over from versions already open, not loaded
        self._shards = shards
        self._on_close = on_close
        self._cond = threading.Condition()
        self._active = 0
        self._closed = False
        self.count = live_count(shards, overlap)

    @property
    def dim(self) -> int:
        return self.manifest.embedder.dim

    @property
    def shards(self) -> list[ShardInfo]:
        return [s.info for s in self._shards]

    def __enter__(self) -> "IndexView":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"IndexView({self.store_uri!r}, version={self.version!r}, shards={len(self._shards)}, count={self.count})"

    # searching

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        exclude_doc_ids: Sequence[str | None] | None = None,
        nprobe: int | None = None,
    ) -> list[list[Neighbour]]:
        """Nearest live chunks to each query, across all shards, best first.

        Args:
            queries: float32 array (n, dim) of L2-normalised query embeddings.
            k: neighbours per query (0 returns empty lists).
            exclude_doc_ids: per query, a doc id whose chunks must not be returned (None: none);
                RETRO excludes a training chunk's own document.
            nprobe: IVF lists to probe instead of the manifest's ``search.nprobe``.

        Returns:
            Per query, up to k neighbours (fewer only if fewer live chunks are reachable), each
            with ``version`` set to this view's version. Tombstoned chunks never appear.

        Raises:
            ValueError: wrong query shape, non-finite values, negative k, or an
                ``exclude_doc_ids`` of another length than ``queries``.
        """
        queries = self._check_queries(queries)
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        n = len(queries)
        if exclude_doc_ids is not None and len(exclude_doc_ids) != n:
            raise ValueError(f"exclude_doc_ids has {len(exclude_doc_ids)} entries for {n} queries; give one per query (None for none)")
        with self._cond:
            if self._closed:
                raise StoreError(f"index view {self.version} is closed")
            self._active += 1
        try:
            if n == 0 or k == 0 or not self._shards:
                return [[] for _ in range(n)]
            excluded = list(exclude_doc_ids) if exclude_doc_ids is not None else [None] * n
            picks = self._top_k(queries, k, excluded, nprobe)
            return self._neighbours(picks)
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def search_ids(self, queries: np.ndarray, k: int, *, nprobe: int | None = None) -> np.ndarray:
        """Chunk ids of the nearest live chunks, without reading their rows (recall measurements).

        Args:
            queries: float32 (n, dim), L2-normalised.
            k: neighbours per query.
            nprobe: IVF lists to probe instead of the manifest's (at least the largest ``nlist``:
                every list, i.e. exact search over the stored codes).

        Returns:
            int64 (n, k), best first; -1 where fewer than k live chunks exist.
        """
        return self.search_scored(queries, k, nprobe=nprobe)[0]

    def search_scored(self, queries: np.ndarray, k: int, *, nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like :meth:`search_ids`, with each neighbour's score and the shard that holds it.

        Returns:
            (chunk ids int64 (n, k), scores float32 (n, k), shard positions int32 (n, k), as in
            :attr:`shards`), best first; id -1, score -inf and shard -1 where fewer than k exist.
        """
        queries = self._check_queries(queries)
        with self._cond:
            if self._closed:
                raise StoreError(f"index view {self.version} is closed")
            self._active += 1
        try:
            ids = np.full((len(queries), k), -1, np.int64)
            scores = np.full((len(queries), k), -np.inf, np.float32)
            shard_no = np.full((len(queries), k), -1, np.int32)
            if len(queries) and k and self._shards:
                for i, picked in enumerate(self._top_k(queries, k, [None] * len(queries), nprobe)):
                    ids[i, : len(picked)] = [self._shards[s].ids[row] for _, s, row in picked]
                    scores[i, : len(picked)] = [score for score, _, _ in picked]
                    shard_no[i, : len(picked)] = [s for _, s, _ in picked]
            return ids, scores, shard_no
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def is_live(self, ids: np.ndarray, shards: np.ndarray | None = None) -> np.ndarray:
        """Per chunk id: is it live in this version? The one definition, the one searches filter by.

        A shard's copy of an id is live unless a tombstone that applies to the shard hides it
        (tombstones are ordered: one written before the shard was added never applies, see
        :mod:`model.store.manifest`). So a chunk deleted and later added again with the same id (a
        document restored with the same content) is live again, in the shard that re-added it.

        Args:
            ids: chunk ids (int64).
            shards: per id, the position (as in :attr:`shards`, as :meth:`search_scored` returns
                it) of the shard whose copy is meant; None: live in any shard.

        Returns:
            bool array of ``len(ids)``.
        """
        ids = np.asarray(ids, np.int64).reshape(-1)
        live = np.zeros(len(ids), bool)
        where = None if shards is None else np.asarray(shards).reshape(-1)
        for s, shard in enumerate(list(self._shards)):
            if where is None:
                live |= shard.is_live(ids)
            elif (mine := where == s).any():
                live[mine] = shard.is_live(ids[mine])
        return live

    def score_errors(self, queries: np.ndarray) -> np.ndarray:
        """Per query and shard, the standard deviation of the error the shard's codes add to scores.

        0 for exact shards; see :func:`model.store.faiss_index.score_error_std`.

        Returns:
            float64 (n, shards), shards in the order of :attr:`shards`.
        """
        queries = self._check_queries(queries)
        out = np.zeros((len(queries), len(self._shards)))
        for s, shard in enumerate(self._shards):
            out[:, s] = faiss_index.score_error_std(shard.index, queries)
        return out

    @property
    def max_nlist(self) -> int:
        """The most IVF lists any shard has (0 when every shard is exact)."""
        return max((faiss.extract_index_ivf(s.index).nlist for s in self._shards if not faiss_index.is_flat(s.meta.factory)), default=0)

    def sample_keys(self, n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """A reproducible uniform sample of live chunks' keys, read back from the indexes.

        IVF keys come back as their codes decode (SQ8: about 1e-2 from the original), which is what
        searching them compares against. Tombstoned chunks are never drawn.

        Args:
            n: keys wanted (fewer if the version has fewer live chunks).
            seed: the sample's seed.

        Returns:
            (chunk ids int64 (m,), keys float32 (m, dim)), m <= n.
        """
        rng = np.random.default_rng(seed)
        sizes = np.array([len(s.ids) for s in self._shards], np.int64)
        total = int(sizes.sum())
        ids, keys, seen = [], [], set()
        for _ in range(8):  # redraw what landed on tombstoned or repeated chunks
            want = min(n, self.count) - len(ids)
            if want <= 0 or not total:
                break
            draws = np.sort(rng.choice(total, size=min(total, 2 * want + 8), replace=False))
            starts = np.concatenate([[0], np.cumsum(sizes)])
            for shard_no in range(len(self._shards)):
                local = draws[(draws >= starts[shard_no]) & (draws < starts[shard_no + 1])] - starts[shard_no]
                for cid, key in zip(*_keys_at(self._shards[shard_no], local)):
                    if len(ids) < min(n, self.count) and cid not in seen and not np.isin(cid, self._shards[shard_no].hidden):
                        seen.add(cid)
                        ids.append(cid)
                        keys.append(key)
        if not ids:
            return np.empty(0, np.int64), np.empty((0, self.dim), np.float32)
        order = rng.permutation(len(ids))
        return np.asarray(ids, np.int64)[order], np.stack(keys).astype(np.float32)[order]

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        return faiss_index.check_vectors(np.asarray(queries), dim=self.dim, normalized=False, what="queries", error=ValueError)

    def _top_k(self, queries: np.ndarray, k: int, excluded: list[str | None], nprobe: int | None = None) -> list[list[tuple[float, int, int]]]:
        """Per query, up to k (score, shard, row), best first, excluded docs and duplicates skipped."""
        n = len(queries)
        out: list[list[tuple[float, int, int]]] = [[] for _ in range(n)]
        # Excluding a document can remove some of the top k: fetch a margin, widen if needed.
        fetch = k if all(doc is None for doc in excluded) else 2 * k + 8
        pending = np.arange(n)
        while len(pending):
            scores, shard_no, rows, cids, exhausted = self._search_shards(queries[pending], fetch, nprobe)
            skip = self._excluded_mask(shard_no, rows, [excluded[qi] for qi in pending])
            order = np.argsort(-scores, axis=1, kind="stable")
            retry = []
            for j, qi in enumerate(pending):
                top = order[j, :k]
                top = top[scores[j, top] > -np.inf]
                top_ids = cids[j, top].tolist()
                if excluded[qi] is None and len(set(top_ids)) == len(top_ids):
                    # The common case: nothing to skip, the best k are the answer.
                    picked = [(float(scores[j, c]), int(shard_no[j, c]), int(rows[j, c])) for c in top]
                else:
                    picked = self._pick(scores[j], shard_no[j], rows[j], cids[j], order[j], k, skip[j])
                if len(picked) < k and not exhausted[j]:
                    retry.append(qi)
                else:
                    out[qi] = picked
            pending = np.asarray(retry, dtype=np.int64)
            fetch *= 4
        return out

    def _excluded_mask(self, shard_no: np.ndarray, rows: np.ndarray, excluded: list[str | None]) -> np.ndarray:
        """Per candidate: is it a chunk of its query's excluded document? (Reads only those rows' doc_id.)"""
        mask = np.zeros(shard_no.shape, bool)
        wanted = np.array([doc is not None for doc in excluded])
        if not wanted.any() or not shard_no.size:
            return mask
        for s, shard in enumerate(self._shards):
            where = np.nonzero((shard_no == s) & wanted[:, None])
            if not len(where[0]):
                continue
            docs = take_rows(shard.table, rows[where], columns=["doc_id"]).column("doc_id")
            targets = pa.array([excluded[j] for j in where[0]], pa.string())
            mask[where] = pc.equal(docs, targets).to_numpy(zero_copy_only=False)
        return mask

    def _pick(self, scores, shard_no, rows, cids, order, k: int, skip: np.ndarray) -> list[tuple[float, int, int]]:
        """One query's best k candidates, skipping duplicates and chunks of an excluded document."""
        picked, seen = [], set()
        for c in order:
            if scores[c] == -np.inf:
                break
            cid = int(cids[c])
            if cid in seen or skip[c]:
                continue
            seen.add(cid)
            picked.append((float(scores[c]), int(shard_no[c]), int(rows[c])))
            if len(picked) == k:
                break
        return picked

    def _search_shards(self, queries: np.ndarray, fetch: int, nprobe: int | None = None):
        """Search every shard for ``fetch`` candidates.

        Returns:
            (scores, shard numbers, rows, chunk ids, exhausted): the candidate arrays are
            (n, total candidates), invalid entries scored -inf; ``exhausted[i]`` says no shard could
            return more for query i.
        """
        all_scores, all_shards, all_rows, all_ids = [], [], [], []
        exhausted = np.ones(len(queries), dtype=bool)
        for s, shard in enumerate(self._shards):
            # What FAISS can return: every entry (post-filtered shards) or the live ones (selector).
            reachable = len(shard.ids) if shard.post_filter else shard.live
            kk = min(fetch + (len(shard.hidden) if shard.post_filter else 0), reachable)
            if shard.live <= 0 or kk <= 0:
                continue
            params = shard.params if nprobe is None else faiss_index.search_params(shard.index, nprobe=nprobe, selector=shard.selector)
            scores, ids = shard.index.search(queries, kk, params=params)
            valid = ids >= 0
            # A shard that filled all kk slots may hold more: the query is not exhausted.
            exhausted &= ~(valid.all(axis=1) & (kk < reachable))
            if shard.post_filter:
                valid &= ~np.isin(ids, shard.hidden)
            rows = np.searchsorted(shard.ids, np.where(valid, ids, 0))
            rows = np.minimum(rows, len(shard.ids) - 1)
            valid &= shard.ids[rows] == ids
            all_scores.append(np.where(valid, scores, -np.inf))
            all_shards.append(np.full(ids.shape, s, dtype=np.int32))
            all_rows.append(rows)
            all_ids.append(np.where(valid, ids, -1))
        if not all_scores:
            empty = np.empty((len(queries), 0))
            return empty, empty.astype(np.int32), empty.astype(np.int64), empty.astype(np.int64), exhausted
        return np.hstack(all_scores), np.hstack(all_shards), np.hstack(all_rows), np.hstack(all_ids), exhausted

    def _neighbours(self, picks: list[list[tuple[float, int, int]]]) -> list[list[Neighbour]]:
        wanted: dict[int, set[int]] = {}
        for per_query in picks:
            for _, s, row in per_query:
                wanted.setdefault(s, set()).add(row)
        records: dict[tuple[int, int], dict] = {}
        for s, rows in wanted.items():
            rows = sorted(rows)
            for row, record in zip(rows, take_rows(self._shards[s].table, rows).to_pylist()):
                records[(s, row)] = record
        result = []
        for per_query in picks:
            hits = []
            for score, s, row in per_query:
                r = records[(s, row)]
                hits.append(
                    Neighbour(
                        chunk_id=r["chunk_id"],
                        doc_id=r["doc_id"],
                        url=r["url"],
                        text=r["text"],
                        tokens=r["tokens"],
                        continuation=r["continuation"],
                        score=score,
                        position=r["position"],
                        version=self.version,
                    )
                )
            result.append(hits)
        return result

    # reading every chunk

    def iter_chunks(self, batch_size: int = 4096) -> Iterator[pa.RecordBatch]:
        """Every live chunk once (tombstoned ones left out), in record batches.

        Args:
            batch_size: most rows per batch.

        Yields:
            Record batches with :data:`model.store.CHUNKS_SCHEMA`.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        seen = np.empty(0, np.int64)
        for shard in list(self._shards):
            keep = ~np.isin(shard.ids, shard.hidden) & ~np.isin(shard.ids, seen)
            seen = np.union1d(seen, shard.ids[keep])
            yield from shard.table.filter(pa.array(keep)).to_batches(max_chunksize=batch_size)

    def local_files(self) -> list[tuple[str, str, Path, str]]:
        """``(shard id, file name, local path, recorded sha256)`` of every file this view maps.

        The paths were verified when the shards were loaded; :mod:`model.store.checksums` can
        check them again (``model/server/reverify.py`` does, in the background).
        """
        return [(shard.meta.id, name, path, shard.meta.files[name].sha256)
                for shard in list(self._shards) for name, path in shard.data.files.items()]

    def close(self) -> None:
        """Release the shards (after searches in flight finish). Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.wait_for(lambda: self._active == 0)
            self._shards = []
        if self._on_close is not None:
            self._on_close()
        LOG.debug("closed index view %s", self.version)
