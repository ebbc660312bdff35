"""The demo's fact check: does the served model prefer, and write, the value its index states?

For each fact an edition changes, the model reads a few sentences about the entity (over one
64-token chunk, so the prompt that follows attends to what was retrieved for them) and then the
fact's prompt ("The chief executive of Branval Optics is"). It is asked two things through the
HTTP API, with the same weights before and after a refresh:

- which value it finds likelier: the total loss of the text ending in the old value against the
  one ending in the new value (``/v1/score``), i.e. log p(old | context) against log p(new | context);
- what it writes after the prompt, greedily (``/v1/generate``), and which neighbours it read.

A model that reads its neighbours prefers the old value while the index is stale and the new one
after the refresh; a model that ignores them (or runs with retrieval off) answers the same both
times. :meth:`FactCheck.passed` holds the issue's bar: at least 80% of the changed facts flip
their preference, and greedy generation writes the new value for at least two thirds after the
refresh and for none before.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from textwrap import shorten

from model.evaluation.figures import figure_png

PREFER_SHARE = 0.8  # share of changed facts whose preference must follow the index
GENERATE_SHARE = 2 / 3  # share of changed facts greedy generation must write in the new form after


@dataclass
class FactAnswer:
    """What the served model said about one changed fact, under one index version."""

    fact: str  # "Branval Optics ceo"
    old: str
    new: str
    index_version: str | None
    retrieval: bool
    logp_old: float  # log p(old value | context + prompt), nats
    logp_new: float
    generated: str  # greedy continuation of the prompt
    neighbours: list[str] = field(default_factory=list)  # "url: text" of what the prompt's chunk read

    @property
    def prefers_new(self) -> bool:
        return self.logp_new > self.logp_old

    @property
    def margin(self) -> float:
        """log p(new) − log p(old): positive when the model sides with the new value."""
        return self.logp_new - self.logp_old

    @property
    def generated_new(self) -> bool:
        return self.generated.strip().startswith(self.new)

    @property
    def generated_old(self) -> bool:
        return self.generated.strip().startswith(self.old)

    def row(self) -> dict:
        return {**asdict(self), "prefers_new": self.prefers_new, "margin": round(self.margin, 3),
                "generated_new": self.generated_new, "generated_old": self.generated_old}


def fact_context(world, change) -> str:
    """The text the model reads before the value: the entity's description, then the fact's prompt."""
    return f"{world.describe(change.entity_key)} {change.prompt}"


def ask_facts(client, world, changes, *, retrieval: bool = True, max_new_tokens: int = 8) -> list[FactAnswer]:
    """Ask a served model about each changed fact (see the module docstring).

    Args:
        client: a :class:`model.client.RetroClient`.
        world: the :class:`beam_jobs.sample.world.SampleWorld` the facts belong to.
        changes: the ``FactChange`` list of an edition.
        retrieval: False asks with retrieval off (the control: a model that reads no neighbours).
        max_new_tokens: how much greedy generation writes after the prompt.

    Returns:
        One answer per change, in order.
    """
    answers = []
    for change in changes:
        context = fact_context(world, change)
        logp = {}
        for value in (change.old, change.new):
            scored = client.score(f"{context} {value}", retrieval=retrieval)
            logp[value] = -scored.loss * scored.tokens
        baseline = client.score(context, retrieval=retrieval)  # the shared prefix, so logp is the value's own
        prefix = -baseline.loss * baseline.tokens
        generated = client.generate(context, max_new_tokens=max_new_tokens, temperature=0.0, retrieval=retrieval)
        read = generated.neighbours[0] if generated.neighbours else []
        answers.append(FactAnswer(
            fact=f"{change.entity} {change.attribute}", old=change.old, new=change.new,
            index_version=generated.index_version, retrieval=generated.retrieval,
            logp_old=logp[change.old] - prefix, logp_new=logp[change.new] - prefix,
            generated=generated.text, neighbours=[f"{n.url}: {n.text[:160]}" for n in read],
        ))  # fmt: skip
    return answers


@dataclass
class FactCheck:
    """The same facts asked before and after a refresh (and after it with retrieval off)."""

    before: list[FactAnswer]
    after: list[FactAnswer]
    control: list[FactAnswer] = field(default_factory=list)  # after the refresh, retrieval off

    @property
    def facts_changed(self) -> int:
        return len(self.after)

    def counts(self) -> dict[str, int]:
        return {
            "facts_changed": self.facts_changed,
            "prefer_old_before": sum(not a.prefers_new for a in self.before),
            "prefer_new_after": sum(a.prefers_new for a in self.after),
            "generated_new_before": sum(a.generated_new for a in self.before),
            "generated_new_after": sum(a.generated_new for a in self.after),
            "control_prefer_new": sum(a.prefers_new for a in self.control),
            "control_generated_new": sum(a.generated_new for a in self.control),
        }

    def failures(self) -> list[str]:
        """Which parts of the bar the answers miss (empty: passed)."""
        c, n = self.counts(), self.facts_changed
        missed = []
        if n == 0:
            return ["no fact changed"]
        if c["prefer_old_before"] < PREFER_SHARE * n:
            missed.append(f"before the refresh only {c['prefer_old_before']}/{n} facts preferred the old value (need {PREFER_SHARE:.0%})")
        if c["prefer_new_after"] < PREFER_SHARE * n:
            missed.append(f"after the refresh only {c['prefer_new_after']}/{n} facts preferred the new value (need {PREFER_SHARE:.0%})")
        if c["generated_new_after"] < GENERATE_SHARE * n:
            missed.append(f"after the refresh greedy generation wrote the new value for {c['generated_new_after']}/{n} (need 2/3)")
        if c["generated_new_before"]:
            missed.append(f"before the refresh greedy generation already wrote the new value for {c['generated_new_before']}/{n}")
        return missed

    @property
    def passed(self) -> bool:
        return not self.failures()

    def control_failures(self) -> list[str]:
        """The bar applied to the retrieval-off answers: they cannot depend on the index, so they must fail it."""
        return FactCheck(self.control, self.control).failures() if self.control else []

    def to_dict(self) -> dict:
        return {**self.counts(), "passed": self.passed, "failures": self.failures(), "control_failures": self.control_failures(),
                "before": [a.row() for a in self.before], "after": [a.row() for a in self.after],
                "control": [a.row() for a in self.control]}


def plot_facts(check: FactCheck) -> bytes:
    """PNG: per fact, log p(new) − log p(old) before and after the refresh (and with retrieval off)."""
    from matplotlib.figure import Figure

    labels = [a.fact for a in check.after]
    series = [("before (stale index)", check.before, "#999999"), ("after (fresh index)", check.after, "#1f77b4")]
    if check.control:
        series.append(("after, retrieval off", check.control, "#ff7f0e"))
    height = 0.8 / len(series)
    fig = Figure(figsize=(8, 0.6 * len(labels) + 1.6))
    ax = fig.subplots()
    for i, (name, answers, colour) in enumerate(series):
        ax.barh([y + i * height for y in range(len(labels))], [a.margin for a in answers], height=height, label=name, color=colour)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks([y + height * (len(series) - 1) / 2 for y in range(len(labels))], labels)
    ax.invert_yaxis()
    ax.set_xlabel("log p(new value) − log p(old value), nats  (right: prefers the new value)")
    ax.set_title("Same weights, before and after one index refresh")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.3 / len(labels)), ncol=len(series), fontsize=8, frameon=False)
    fig.tight_layout()
    return figure_png(fig, dpi=110)


def report_markdown(check: FactCheck, *, lag_s: float | None, versions: tuple[str, str]) -> str:
    """The demo's report: counts, then one row per fact with both answers side by side."""
    c, n = check.counts(), check.facts_changed
    lines = [
        "# retrofresh demo: the served model reads the news",
        "",
        f"Index versions: before `{versions[0]}`, after `{versions[1]}`; the model's weights are the same.",
        "",
        f"- preferred the old value before the refresh: **{c['prefer_old_before']}/{n}**",
        f"- preferred the new value after the refresh: **{c['prefer_new_after']}/{n}**",
        f"- greedy generation wrote the new value: before {c['generated_new_before']}/{n}, after **{c['generated_new_after']}/{n}**",
        f"- control, after the refresh with retrieval off: prefers new {c['control_prefer_new']}/{n}, writes new {c['control_generated_new']}/{n}",
    ]
    if lag_s is not None:
        lines.append(f"- freshness lag (the site changed → the first answer from the new version): **{lag_s:.1f} s**")
    lines += ["", f"Result: **{'passed' if check.passed else 'not passed'}**"]
    lines += [f"- {failure}" for failure in check.failures()]
    lines += ["", "![preference per fact](facts.png)", "",
              "| fact | old → new | before: margin, wrote | after: margin, wrote | neighbour read after |",
              "| --- | --- | --- | --- | --- |"]
    for b, a in zip(check.before, check.after):
        cell = lambda x: f"{x.margin:+.2f}, “{_cell(x.generated)}”"  # noqa: E731
        neighbour = _cell(a.neighbours[0].split("://", 1)[-1].split("/", 1)[-1]) if a.neighbours else "none"
        lines.append(f"| {a.fact} | {a.old} → {a.new} | {cell(b)} | {cell(a)} | {neighbour} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """One Markdown table cell: whitespace collapsed, pipes escaped, at most 90 characters."""
    return shorten(text, 90, placeholder="…").replace("|", "/")
