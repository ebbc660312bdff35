"""Flex template launcher entry point: run the ingest job (``beam_jobs.ingest``) on Dataflow.

Dataflow's template launcher runs this file (``FLEX_TEMPLATE_PYTHON_PY_FILE``) on a launcher VM
with the template's parameters as ``--name=value`` flags. It fetches a ``gs://`` sources file to a
local copy (the job reads its sources on the launching machine), makes Dataflow the runner unless
one is given, and hands over to ``python -m beam_jobs.ingest``. It is a deployment asset: nothing in
the package imports it.
"""

from __future__ import annotations

import sys
import tempfile


def local_sources(argv: list[str]) -> list[str]:
    """``argv`` with a ``--sources gs://...`` value replaced by a local copy of that file."""
    from apache_beam.io.filesystems import FileSystems

    out = list(argv)
    for i, arg in enumerate(out):
        flag, _, value = arg.partition("=")
        if flag != "--sources":
            continue
        if not value and i + 1 < len(out):
            i, value = i + 1, out[i + 1]
        if value.startswith("gs://"):
            with FileSystems.open(value) as remote, tempfile.NamedTemporaryFile("wb", suffix=".yaml", delete=False) as copy:
                copy.write(remote.read())
            out[i] = copy.name if out[i] == value else f"--sources={copy.name}"
    return out


def main(argv: list[str] | None = None) -> int:
    from beam_jobs.ingest import main as ingest_main

    args = local_sources(list(sys.argv[1:] if argv is None else argv))
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.append("--runner=DataflowRunner")
    return ingest_main(args)


if __name__ == "__main__":
    sys.exit(main())
