"""Background re-verification of the served index version: its shard files against their recorded sha256.

A version's files are verified once, when it is loaded; after that a file rotting or overwritten
on disk under the served version would go unnoticed (the mapped pages are read back from disk
once the kernel evicts them). Every ``reverify_interval_s`` seconds (``RETROFRESH_REVERIFY_INTERVAL_S``,
0 = off) the server hashes each file of the version it serves again, reading the bytes from disk
(the per-process digest memo is bypassed: bit rot keeps size and mtime), and reports the result
through ``GET /v1/index`` (``verification``) and ``/metrics``. A corrupt file is logged and
reported; the server keeps serving the version, as the files are immutable and the fix is an
operator's (restore the file, roll back, or republish). ``POST /admin/reverify`` runs a pass now.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import anyio

from model.contracts.clock import utcnow
from model.server.background import cancel
from model.server.schemas import CorruptFile, IndexVerification
from model.store.checksums import sha256_file

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerificationPass:
    """What one pass over the served version's files found."""

    version: str | None
    started_at: datetime
    verified_at: datetime
    seconds: float
    files: int = 0
    bytes: int = 0
    shards: tuple[str, ...] = ()
    corrupt: tuple[CorruptFile, ...] = field(default_factory=tuple)

    @property
    def shards_corrupt(self) -> list[str]:
        return sorted({c.shard for c in self.corrupt})


def verify_files(files: list[tuple[str, str, Path, str]]) -> tuple[int, list[CorruptFile]]:
    """Hash each ``(shard id, file name, path, recorded sha256)`` from disk.

    Returns:
        (bytes read, the files that are missing or whose sha256 differs).
    """
    read, corrupt = 0, []
    for shard, name, path, expected in files:
        try:
            actual = sha256_file(path)
            read += path.stat().st_size
        except OSError as exc:
            corrupt.append(CorruptFile(shard=shard, file=name, path=str(path), error=f"unreadable: {type(exc).__name__}: {exc}"))
            continue
        if actual != expected:
            corrupt.append(CorruptFile(shard=shard, file=name, path=str(path),
                                       error=f"sha256 {actual[:16]}... != recorded {expected[:16]}..."))
    return read, corrupt


class Reverifier:
    """Re-verifies the version an :class:`model.server.swap.IndexHolder` serves, now or every ``interval_s``.

    Args:
        holder: the index holder (a pass pins its current version, so a swap cannot close it mid-pass).
        interval_s: seconds between passes; 0 or less: no background passes.
        metrics: the server's :class:`model.server.metrics.ServerMetrics`.
        verifier: the store's digest memo; a file found corrupt is dropped from it, so the next
            load of a version that uses it hashes it again instead of trusting the memo.
    """

    def __init__(self, holder, interval_s: float, metrics, verifier=None):
        self.holder = holder
        self.interval_s = max(float(interval_s), 0.0)
        self.metrics = metrics
        self.verifier = verifier
        self.last: VerificationPass | None = None
        self.passes = 0
        self._known_corrupt: set[tuple[str, str]] = set()  # (version, shard) reported already
        self._task: asyncio.Task | None = None
        self._limiter = anyio.CapacityLimiter(1)  # one pass at a time, on a thread of its own

    def run_once(self) -> VerificationPass | None:
        """One pass over the served version's files (blocking). None when no version is served."""
        with self.holder.pin() as loaded:
            if loaded is None:
                return None
            started, clock = utcnow(), time.perf_counter()
            files = loaded.view.local_files()
            read, corrupt = verify_files(files)
            result = VerificationPass(
                version=loaded.version, started_at=started, verified_at=utcnow(),
                seconds=round(time.perf_counter() - clock, 3), files=len(files), bytes=read,
                shards=tuple(sorted({shard for shard, *_ in files})), corrupt=tuple(corrupt),
            )
        self._record(result)
        return result

    def _record(self, result: VerificationPass) -> None:
        found = {(result.version, shard) for shard in result.shards_corrupt}
        new = found - self._known_corrupt
        for bad in result.corrupt:
            if (result.version, bad.shard) in new:
                LOG.error(
                    "index version %s: shard %s file %s is corrupt on disk (%s; %s); still serving it as loaded. "
                    "Restore the file, roll back to a version without this shard, or republish",
                    result.version, bad.shard, bad.file, bad.error, bad.path,
                )
            if self.verifier is not None:
                self.verifier.forget(bad.path)
        healed = {key for key in self._known_corrupt if key[0] == result.version} - found
        for version, shard in sorted(healed):
            LOG.warning("index version %s: shard %s matches its sha256 again", version, shard)
        self._known_corrupt = found
        self.metrics.corrupt_found.inc(len(new))
        self.metrics.corrupt_shards.set(len(found))
        self.metrics.verifications.inc()
        self.metrics.last_verified.set(result.verified_at.timestamp())
        self.last, self.passes = result, self.passes + 1
        if not result.corrupt:
            LOG.info("re-verified index version %s: %d files of %d shards (%.1f MB) match, in %.2fs",
                     result.version, result.files, len(result.shards), result.bytes / 1e6, result.seconds)

    def report(self) -> IndexVerification:
        """The last pass as ``/v1/index`` shows it."""
        out = IndexVerification(interval_s=self.interval_s, passes=self.passes)
        last = self.last
        if last is None:
            return out
        corrupt = last.shards_corrupt
        return out.model_copy(update=dict(
            version=last.version, started_at=last.started_at, verified_at=last.verified_at, seconds=last.seconds,
            files=last.files, bytes=last.bytes, shards_ok=len(last.shards) - len(corrupt), shards_corrupt=corrupt,
            corrupt_files=list(last.corrupt),
        ))

    async def verify_now(self) -> VerificationPass | None:
        return await anyio.to_thread.run_sync(self.run_once, limiter=self._limiter)

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        """Start the background passes (the first one ``interval_s`` after start-up: loading just verified)."""
        if self.interval_s > 0:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="index-reverifier")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.verify_now()
            except Exception:  # a failed pass must not end the passes, nor the server
                LOG.exception("re-verification of the served index failed")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
