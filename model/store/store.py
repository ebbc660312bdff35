"""``Store``: one API over a local directory or ``gs://bucket/prefix`` holding versioned shards."""

from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
import time
import zlib
from pathlib import Path
from typing import Sequence

import faiss
import numpy as np
import pyarrow as pa

from model.contracts.chunking import Chunk
from model.contracts.compat import Compatibility
from model.contracts.embedder import EmbedderSpec
from model.store import faiss_index, layout, ledger, shards
from model.store.backends import Backend, CasFailed, open_backend
from model.store.cache import ShardCache
from model.store.checksums import Verifier
from model.store.errors import AlreadyExists, DamagedCurrent, IncompatibleIndex, NoCurrentVersion, PublishConflict, StoreError
from model.store.faiss_index import IndexPolicy
from model.store.lineage import Lineages
from model.store.manifest import Manifest, ShardInfo
from model.store.pool import ShardPool
from model.store.schemas import chunks_to_table, empty_ledger
from model.store.uri import parse_store_uri
from model.store.view import IndexView, load_shard_data, version_shard

LOG = logging.getLogger(__name__)

_ANY = object()  # rollback's default: compare-and-swap against whatever CURRENT names now


def default_cache_dir() -> Path:
    """The cache the server and CLI use unless told otherwise (``Settings.cache_dir``'s default)."""
    from model.contracts.settings import Settings

    return Path(Settings.model_fields["cache_dir"].default)


def open_store(uri: str | Path, *, cache_dir: Path | None = None, policy: IndexPolicy | None = None,
               cache_max_bytes: int | None = None) -> "Store":
    """Open an index store.

    Args:
        uri: ``/path``, ``file:///path`` or ``gs://bucket/prefix``. A local directory need not
            exist yet (the first write creates it); a bucket must.
        cache_dir: where GCS shards are cached for memory-mapping; default ``~/.cache/retrofresh``.
        policy: how new shards are indexed (flat threshold, IVF codec, nlist).
        cache_max_bytes: the most bytes of GCS shards to keep in ``cache_dir`` (least recently
            used first out, never a shard of a version open or being opened); None: no limit.

    Returns:
        The store.

    Raises:
        StoreError: an unknown URI scheme, a bucket that does not exist, or no GCS credentials;
            the message says how to fix it.
    """
    location = parse_store_uri(uri)
    return Store(open_backend(location), cache_dir=cache_dir, policy=policy, cache_max_bytes=cache_max_bytes)


class Store:
    """A versioned, sharded FAISS index in a directory or a bucket. See docs/ARCHITECTURE.md.

    Args:
        backend: blob I/O for the store's location.
        cache_dir: local cache for remote shards.
        policy: how new shards are indexed.
        cache_max_bytes: bound on the cache of remote shards (see :mod:`model.store.cache`).
    """

    def __init__(self, backend: Backend, *, cache_dir: Path | None = None, policy: IndexPolicy | None = None,
                 cache_max_bytes: int | None = None):
        self.backend = backend
        self.uri = backend.uri
        self.policy = policy or IndexPolicy()
        self.pool = ShardPool()  # shards open versions hold, shared by every version listing them
        self.cache = ShardCache(Path(cache_dir) if cache_dir is not None else default_cache_dir(), Verifier(),
                                max_bytes=cache_max_bytes, pinned=self.pool.held_ids)
        self.lineages = Lineages(backend, self.cache.root, self.policy)

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    # versions and CURRENT

    def current(self) -> str | None:
        """The version ``CURRENT`` names; None if nothing was published yet.

        Raises:
            DamagedCurrent: ``CURRENT`` holds something other than a version id.
        """
        try:
            raw = self.backend.read_bytes(layout.CURRENT)
        except FileNotFoundError:
            return None
        return self._version_in(raw)

    def _version_in(self, raw: bytes) -> str:
        """The version id ``CURRENT``'s bytes name, or :class:`DamagedCurrent` saying how to repair it."""
        try:
            return layout.check_id(raw.decode("utf-8").strip(), "version")
        except (UnicodeDecodeError, StoreError):
            pass
        newest = max((v for v in map(layout.version_of_manifest_key, (o.key for o in self.backend.list(layout.VERSIONS))) if v),
                     key=layout.version_seq, default=None)
        what = "is empty" if not raw.strip() else f"holds {raw[:80]!r}, not a version id"
        hint = f" (the newest written is {newest})" if newest else ""
        raise DamagedCurrent(
            f"CURRENT in {self.uri} is damaged: it {what}, so no version can be read through it. Repair it with "
            f"`retrofresh index rollback VERSION`, naming one of `retrofresh index versions`{hint}",
            raw=raw,
        )

    def manifest(self, version: str | None = None) -> Manifest:
        """A version's manifest.

        Args:
            version: a version id; None for the one ``CURRENT`` names.

        Raises:
            NoCurrentVersion: version is None and nothing was published yet.
            StoreError: no such version.
        """
        if version is None:
            version = self.current()
            if version is None:
                where = "" if self.backend.exists(layout.CURRENT) or self._root_exists() else " (it does not exist yet)"
                raise NoCurrentVersion(
                    f"store {self.uri}{where} has no CURRENT version yet: publish one first "
                    "(`retrofresh refresh` or `retrofresh demo`), or check the --store URI"
                )
        key = layout.manifest_key(version)
        try:
            data = self.backend.read_bytes(key)
        except FileNotFoundError:
            raise StoreError(f"version {version} does not exist in {self.uri}; `retrofresh index versions --store {self.uri}` lists them") from None
        manifest = Manifest.from_json(data, where=f"{self.uri}/{key}")
        if manifest.version != version:
            raise StoreError(f"{self.uri}/{key} describes version {manifest.version}, not {version}")
        return manifest

    def _root_exists(self) -> bool:
        local = self.backend.local_path("")
        return local is None or local.is_dir()

    def versions(self) -> list[Manifest]:
        """Every written manifest (published or not), oldest first."""
        out = []
        for obj in self.backend.list(layout.VERSIONS):
            version = layout.version_of_manifest_key(obj.key)
            if version is None:
                continue
            try:
                out.append(self.manifest(version))
            except StoreError as exc:
                LOG.warning("skipping unreadable version %s: %s", version, exc)
        return sorted(out, key=lambda m: (layout.version_seq(m.version), m.created_at, m.version))

    def new_version_id(self) -> str:
        """A fresh version id, ``v{seq:06d}-{hex}``, seq one more than the largest written."""
        seqs = [layout.version_seq(layout.version_of_manifest_key(o.key) or "") for o in self.backend.list(layout.VERSIONS)]
        return layout.version_id(max(seqs, default=0) + 1)

    # writing shards, ledgers, manifests

    def write_shard(
        self,
        chunks: Sequence[Chunk] | pa.Table,
        embeddings: np.ndarray,
        *,
        lineage: str | None = None,
        embedder: EmbedderSpec,
    ) -> ShardInfo:
        """Write one immutable shard: FAISS index + chunks.arrow + shard.json.

        Below ``policy.flat_max`` chunks the index is exact (``IDMap2,Flat``). Above it, the
        shard is IVF with its lineage's trained quantizer (trained here from these vectors if the
        lineage has none yet; a new lineage id is made if ``lineage`` is None).

        Args:
            chunks: the chunks (``model.contracts.chunking.Chunk``) or a table with ``CHUNKS_SCHEMA``'s columns.
            embeddings: float32 (len(chunks), dim), row i the key of chunk i.
            lineage: the lineage whose quantizer IVF shards share (see :meth:`train_lineage`).
            embedder: what made the embeddings; recorded in shard.json.

        Returns:
            The manifest entry for the new shard (pass it to :meth:`Manifest.next`).

        Raises:
            StoreError: no chunks, mismatched rows, wrong shape, non-normalised or non-finite
                vectors, repeated or negative chunk ids.
        """
        table = chunks_to_table(chunks)
        if table.num_rows == 0:
            raise StoreError("write_shard got no chunks; a version that adds nothing needs no shard (pass add_shards=[])")
        vectors = faiss_index.check_vectors(embeddings, dim=embedder.dim, rows=table.num_rows, normalized=embedder.normalize)
        table, vectors = shards.sort_by_chunk_id(table, vectors)
        ids = table.column("chunk_id").to_numpy()
        if table.num_rows < self.policy.flat_max:
            index = faiss_index.build_flat(vectors, ids)
        else:
            trained = self.trained_index(lineage) if lineage is not None else None
            if trained is None:
                lineage = self.train_lineage(vectors, embedder=embedder, lineage=lineage)
                trained = self.trained_index(lineage)
            index = faiss_index.build_ivf(trained, vectors, ids)
        return self.put_shard(table, index, embedder=embedder, lineage=lineage)

    def put_shard(self, table: pa.Table, index, *, embedder: EmbedderSpec, lineage: str | None) -> ShardInfo:
        """Write one shard from a built index and its rows, already checked and sorted by chunk id.

        What :meth:`write_shard` does after building the index; compaction, which builds its
        indexes by merging, writes through it too.

        Args:
            table: the chunk rows, ``CHUNKS_SCHEMA``'s columns, sorted by ``chunk_id``.
            index: their FAISS index (flat, or IVF of ``lineage``), ids = chunk ids.
            embedder: what made the keys; recorded in shard.json.
            lineage: the IVF lineage (None for a flat shard).

        Returns:
            The manifest entry for the new shard.
        """
        with self.backend.staging_dir() as directory:
            meta, meta_bytes = shards.stage(
                directory, shard_id=layout.new_shard_id(), table=table, index=index, embedder=embedder, lineage=lineage
            )
            return shards.put(self.backend, directory, meta, meta_bytes)

    def train_lineage(
        self,
        sample: np.ndarray,
        *,
        embedder: EmbedderSpec,
        lineage: str | None = None,
        expected_count: int | None = None,
    ) -> str:
        """Train a coarse quantizer and store it as ``trained/<lineage>.faiss``.

        Args:
            sample: training keys (n, dim), L2-normalised; at least 39 per centroid.
            embedder: what made them.
            lineage: the id to store it under; default a new one.
            expected_count: keys the lineage will hold (sets nlist); default ``len(sample)``.

        Returns:
            The lineage id. If another writer stored that lineage first, theirs is kept and used.
        """
        return self.lineages.train(sample, embedder=embedder, lineage=lineage, expected_count=expected_count)

    def trained_index(self, lineage: str) -> faiss.Index | None:
        """A lineage's trained, empty IVF index (None: no such lineage); shared, so build on a copy
        (``faiss_index.build_ivf`` does)."""
        return self.lineages.get(lineage)

    def write_ledger(self, version: str, table: pa.Table) -> str:
        """Write a version's document ledger (create-only) with its sha256 beside it.

        Args:
            version: the version the ledger belongs to.
            table: one row per live document (``LEDGER_SCHEMA``; optional columns may be absent).

        Returns:
            The ledger's path relative to the store (for :meth:`Manifest.next`'s ``ledger``).
        """
        return ledger.write(self.backend, version, table)

    def read_ledger(self, version: str) -> pa.Table:
        """A version's ledger; an empty table with ``LEDGER_SCHEMA`` if it has none.

        Raises:
            ChecksumMismatch: the ledger's bytes differ from the sha256 written beside it.
        """
        key = layout.ledger_key(version)
        if self.backend.exists(layout.manifest_key(version)):
            key = self.manifest(version).ledger
            if key is None:
                return empty_ledger()
        elif not self.backend.exists(key):
            return empty_ledger()
        with tempfile.TemporaryDirectory() as tmp:
            return ledger.read(self.backend, key, self.cache.verifier, Path(tmp))

    def write_manifest(self, manifest: Manifest) -> None:
        """Write a version's manifest, create-only (a draft until published).

        Writing the identical manifest again is a no-op; other content for an existing version
        raises StoreError.

        Raises:
            StoreError: the version exists with other content, or a listed shard is missing.
            IncompatibleIndex: a shard was made by another embedder than the manifest's.
        """
        for shard in manifest.shards:
            shards.read_meta(self.backend, shard, embedder=manifest.embedder)
        key = layout.manifest_key(manifest.version)
        try:
            self.backend.put_bytes(key, manifest.to_json())
        except AlreadyExists:
            if self.manifest(manifest.version) != manifest:
                raise StoreError(
                    f"version {manifest.version} already exists in {self.uri} with other content; manifests are "
                    "immutable: take a new id from store.new_version_id()"
                ) from None

    # publishing

    def verify(self, version: str | Manifest) -> Manifest:
        """Check every file a version references against its sha256 (GCS: through the cache).

        Returns:
            The manifest.

        Raises:
            ChecksumMismatch: a file differs from its recorded sha256 (named in the message).
            IncompatibleIndex: a shard made by another embedder.
            StoreError: a missing file.
        """
        manifest = version if isinstance(version, Manifest) else self.manifest(version)
        with self._caching(manifest):
            for shard in manifest.shards:
                meta = shards.read_meta(self.backend, shard, embedder=manifest.embedder)
                self.cache.shard_files(self.backend, meta)
        if manifest.ledger is not None:
            with tempfile.TemporaryDirectory() as tmp:
                ledger.verified_path(self.backend, manifest.ledger, self.cache.verifier, Path(tmp))
        return manifest

    def publish(self, manifest: Manifest | str, *, expected_current: str | None, check_parent: bool = True) -> Manifest:
        """Make a version current: write its manifest (create-only), verify it, swap ``CURRENT``.

        Args:
            manifest: the new version, or the id of a draft written with :meth:`write_manifest`.
            expected_current: what ``CURRENT`` must name now (None: nothing published yet).
            check_parent: refuse a manifest whose parent is not ``expected_current`` (it would drop
                the changes in between); pass False to publish a full rebuild over another lineage.

        Returns:
            The published manifest.

        Raises:
            PublishConflict: ``CURRENT`` is not ``expected_current`` (another writer won), or the
                manifest was built on another parent. Nothing changed for readers.
            ChecksumMismatch, IncompatibleIndex, StoreError: the version is not sound; not published.
        """
        if isinstance(manifest, str):
            manifest = self.manifest(manifest)
        else:
            self.write_manifest(manifest)
        if check_parent and manifest.parent != expected_current:
            raise PublishConflict(
                f"version {manifest.version} was built on {manifest.parent}, but you expect CURRENT to be "
                f"{expected_current}; rebuild it on {expected_current} (store.rebase) or pass check_parent=False",
                expected=expected_current,
                actual=self.current(),
            )
        self.verify(manifest)
        self._swap_current(expected_current, manifest.version)
        LOG.info("published %s in %s (was %s)", manifest.version, self.uri, expected_current)
        return manifest

    def _swap_current(self, expected: str | None, version: str, *, found: bytes | None | object = _ANY) -> None:
        """Replace ``CURRENT`` by ``version`` if it names ``expected`` (or, given ``found``, holds exactly those bytes)."""

        def matches(actual: bytes | None) -> bool:
            if found is not _ANY:  # a damaged CURRENT names no version to compare: its bytes are compared
                return actual == found
            return (actual.decode("utf-8", "replace").strip() if actual is not None else None) == expected

        try:
            self.backend.swap(layout.CURRENT, f"{version}\n".encode("utf-8"), matches=matches)
        except CasFailed as exc:
            actual = exc.actual.decode("utf-8", "replace").strip() if exc.actual is not None else None
            raise PublishConflict(
                f"CURRENT of {self.uri} is {actual}, not {expected}: another writer published first. "
                f"{version} was not published; rebuild it on {actual} (store.rebase) and publish again",
                expected=expected,
                actual=actual,
            ) from None

    def rebase(self, draft: Manifest | str, *, onto: str | None = None, version: str | None = None) -> Manifest:
        """Rebuild a draft on another parent (after losing a publish race): same new shards and
        tombstones, parent ``onto`` (default: CURRENT). Nothing is written.

        Returns:
            The new, unwritten manifest with a fresh version id.
        """
        draft = draft if isinstance(draft, Manifest) else self.manifest(draft)
        old = self.manifest(draft.parent) if draft.parent else None
        new_parent = self.manifest(onto)
        old_ids = {s.id for s in old.shards} if old else set()
        return Manifest.next(
            new_parent,
            version=version or self.new_version_id(),
            embedder=draft.embedder,
            tokenizer=draft.tokenizer,
            add_shards=[s for s in draft.shards if s.id not in old_ids],
            tombstones=draft.tombstones[len(old.tombstones) if old else 0 :],
            ledger=draft.ledger,
            documents=draft.stats.documents,
            watermark=draft.watermark,
            sources=draft.sources,
            search=draft.search,
        )

    def rollback(self, version: str, *, expected_current: str | None = _ANY) -> str | None:  # type: ignore[assignment]
        """Point ``CURRENT`` at an older (kept) version, after verifying its files.

        This is also the repair of a damaged ``CURRENT`` (:class:`DamagedCurrent`): with the
        default ``expected_current`` the swap compares the bytes ``CURRENT`` held when read.

        Args:
            version: the version to serve.
            expected_current: what CURRENT must name now; default: whatever it holds when read
                (the swap is still a compare-and-swap against that).

        Returns:
            The version CURRENT named before (None: none, or it was damaged).

        Raises:
            PublishConflict: CURRENT changed in the meantime.
            StoreError, ChecksumMismatch: the version is missing or its files are.
        """
        manifest = self.verify(version)
        if expected_current is not _ANY:
            self._swap_current(expected_current, manifest.version)
            previous = expected_current
        else:
            try:
                found = self.backend.read_bytes(layout.CURRENT)
            except FileNotFoundError:
                found = None
            try:
                previous = self._version_in(found) if found is not None else None
            except DamagedCurrent as damage:
                LOG.warning("repairing %s", damage)
                previous = None
            self._swap_current(previous, manifest.version, found=found)
        LOG.info("rolled %s back to %s (was %s)", self.uri, version, previous)
        return previous

    # reading

    def open(self, version: str | None = None, *, embedder: EmbedderSpec | None = None) -> IndexView:
        """Load a version for searching: verify its new shards' files, memory-map them.

        Shards that a version already open from this store holds are shared, not read or verified
        again (they are immutable and pinned by sha256; see :mod:`model.store.pool`); only the
        others are fetched, verified and mapped. Tombstone filters are built for this version.

        Args:
            version: a version id; None for CURRENT.
            embedder: the spec of the embedder that will make queries; refused if it differs from
                the one that made the version's keys.

        Returns:
            The view (close it when done: that releases its shards).

        Raises:
            NoCurrentVersion: version is None and nothing was published.
            IncompatibleIndex: another embedder or dimension.
            ChecksumMismatch: a file does not match its sha256 (named in the message).
        """
        start = time.perf_counter()
        manifest = self.manifest(version)
        Compatibility.of(embedder=embedder, source="the queries", kind="run").check(
            Compatibility.of_manifest(manifest, source=f"version {manifest.version} of {self.uri}"), terms=("embedder",),
            fix="use the same embedder, or re-embed the corpus", error=IncompatibleIndex,
        )
        held, loaded, shared = [], [], 0
        tombstones = np.asarray(manifest.tombstones, dtype=np.int64)
        try:
            with self._caching(manifest):
                for info in manifest.shards:
                    data, reused = self.pool.acquire(info, functools.partial(self._load_shard, info, manifest.embedder))
                    held.append(data)
                    if reused and data.meta.embedder != manifest.embedder:
                        raise IncompatibleIndex(f"shard {info.id} was embedded with {data.meta.embedder.name}, not the version's {manifest.embedder.name}")
                    shared += reused
                    loaded.append(version_shard(data, info, tombstones=tombstones[info.since :], nprobe=manifest.search.nprobe))
        except Exception:
            for data in held:
                self.pool.release(data)
            raise

        def release() -> None:
            for data in held:
                self.pool.release(data)

        view = IndexView(manifest, loaded, store_uri=self.uri, on_close=release, shared=shared, overlap=self.pool.overlap)
        LOG.info(
            "opened %s version %s: %d shards (%d shared with open versions), %d live chunks, in %.2fs",
            self.uri, manifest.version, len(loaded), shared, view.count, time.perf_counter() - start,
        )
        return view

    def _caching(self, manifest: Manifest):
        """Pin a version's shards in the cache of remote shards while they are fetched (local stores: no cache)."""
        return self.cache.loading(manifest) if self.backend.local_path("") is None else contextlib.nullcontext()

    def _load_shard(self, info: ShardInfo, embedder: EmbedderSpec):
        meta = shards.read_meta(self.backend, info, embedder=embedder)
        files = self.cache.shard_files(self.backend, meta)
        return load_shard_data(meta, info.sha256, files, self.pool.quantizers)

    def tune(self, version: str | None = None, *, target: float | None = None, k: int | None = None,
             queries: int | None = None, view: IndexView | None = None):
        """Measure a version's recall@k against exact search and find the smallest nprobe meeting ``target``.

        Nothing is written; :meth:`Manifest.retuned` makes the manifest that records the result.
        See :mod:`model.store.tuning`.

        Args:
            version: the version (None: CURRENT); ignored when ``view`` is given.
            target: least recall@k (default 0.95).
            k: neighbours per query (default 2).
            queries: keys sampled as queries (default 200).
            view: an open view of the version to measure (else it is opened and closed here).

        Returns:
            The :class:`model.store.tuning.Tuning`.
        """
        from model.store import tuning

        options = {"target": target or tuning.DEFAULT_TARGET, "k": k or tuning.DEFAULT_K, "queries": queries or tuning.DEFAULT_QUERIES}
        if view is not None:
            return tuning.tune_nprobe(view, **options, seed=zlib.crc32(view.version.encode()))
        with self.open(version) as opened:  # the sample is seeded by the version id: re-tuning repeats it
            return tuning.tune_nprobe(opened, **options, seed=zlib.crc32(opened.version.encode()))

    # maintenance

    def compact(self, version: str | None = None) -> Manifest:
        """Merge a version's shards (one per lineage, flat ones together), dropping tombstoned
        chunks. Writes the merged shards; returns an unpublished manifest with parent = that
        version and the same answers. See :mod:`model.store.compaction`."""
        from model.store.compaction import compact

        return compact(self, self.manifest(version))

    def gc(self, keep: int, *, min_age_s: float = 3600.0, dry_run: bool = False) -> list[str]:
        """Delete what the newest ``keep`` versions and CURRENT do not reference.

        Args:
            keep: versions to keep (newest by sequence), at least 1; CURRENT is always kept.
            min_age_s: unreferenced files younger than this are kept (a writer may be about to
                reference them).
            dry_run: only list what would be deleted.

        Returns:
            The deleted keys (or those that would be), relative to the store.
        """
        from model.store.gc import collect

        return collect(self, keep=keep, min_age_s=min_age_s, dry_run=dry_run)

