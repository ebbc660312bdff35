"""The sample world: a deterministic, time-evolving website of cities, companies and teams.

``SampleWorld(seed, size).edition(n)`` is the site as of edition n (one edition a week). Facts
(a city's mayor, a company's chief executive, a team's captain, ...) change on known dates; each
fact is written as one canonical sentence ("The mayor of Varenholm is Ada Lind.") that appears
on the entity's profile, on its section's index page, on related profiles (a company on its
headquarters city's page) and, when it changed recently, in a dated news article. So every fact
is in several documents, and ``edition(n).changes`` says exactly which facts changed since
edition n-1, from what, to what, and on which pages the new value now stands.

The site also has what real sites have: a sitemap with lastmod, an RSS feed, a robots.txt with a
disallowed path (linked from the home page), a page that always fails with 500, a broken link
(404), a PDF, and a malformed page.
"""

from __future__ import annotations

import hashlib
import html
import logging
import random
import string
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

LOG = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
START = date(2024, 1, 1)  # date of the first history step
HISTORY_STEPS = 4  # changes that happened before edition 0 (its news archive)
PER_INDEX_PAGE = 25
SITE_NAME = "The Tessellate Gazette"
DISALLOWED_PREFIX = "/private/"
BROKEN_PATH = "/reports/annual-report.html"  # always 500
MISSING_PATH = "/cities/atlantis.html"  # linked, never exists: 404
PDF_PATH = "/downloads/brochure.pdf"  # not an allowed content type
PRIVATE_PATH = "/private/staff.html"  # exists, linked, disallowed by robots.txt

ATTRIBUTES = {
    "city": ("mayor", "population"),
    "company": ("ceo", "headquarters", "employees"),
    "team": ("coach", "captain"),
}
SENTENCES = {  # canonical sentence of each fact; the value always ends it, so a prompt is the rest
    ("city", "mayor"): "The mayor of {name} is {value}.",
    ("city", "population"): "{name} has a population of {value}.",
    ("company", "ceo"): "The chief executive of {name} is {value}.",
    ("company", "headquarters"): "{name} has its headquarters in {value}.",
    ("company", "employees"): "The number of people employed by {name} is {value}.",
    ("team", "coach"): "The head coach of {name} is {value}.",
    ("team", "captain"): "The captain of {name} is {value}.",
}
HEADLINES = {
    ("city", "mayor"): "{value} becomes mayor of {name}",
    ("city", "population"): "{name} census counts {value} residents",
    ("company", "ceo"): "{value} takes over as chief executive of {name}",
    ("company", "headquarters"): "{name} moves its headquarters to {value}",
    ("company", "employees"): "{name} now employs {value} people",
    ("team", "coach"): "{name} appoints {value} as head coach",
    ("team", "captain"): "{value} named captain of {name}",
}
# With ``news_lead``: headlines that do not give the new value away, for articles whose value comes
# after a background paragraph (see SampleWorld).
LEAD_HEADLINES = {
    ("city", "mayor"): "{name} has a new mayor",
    ("city", "population"): "New census figures for {name}",
    ("company", "ceo"): "A change at the top of {name}",
    ("company", "headquarters"): "{name} moves its headquarters",
    ("company", "employees"): "{name} reports a new head count",
    ("team", "coach"): "{name} appoints a new head coach",
    ("team", "captain"): "{name} names a new captain",
}
SECTIONS = {"city": "cities", "company": "companies", "team": "teams"}

_FIRST = (
    "Ada Alma Anouk Arne Aster Bea Bo Brann Cato Cilla Dag Dara Edda Elin Emil Ester Finn Freya Gunn Hale "
    "Hedda Ilse Ivo Jora Kai Kari Lars Leif Lina Liv Luca Maja Mads Mira Nils Nora Odd Oline Otto Pia Rune "
    "Saga Sela Sten Sune Tala Tove Ulla Vera Vidar Wren Yara Ylva Zeno"
).split()
_SYL = "bar ber bran dal dor el fen gar hal har hol kar kel lin lor mar mel nor ran ren ros sal sel ster tal tor val ven vik wen".split()
_CITY_END = "holm vale port bury stad ford mouth wick haven field gate moor".split()
_INDUSTRY = "Analytics Foundry Logistics Textiles Robotics Shipping Pharma Energy Ceramics Optics Mills Software".split()
_MASCOT = "Falcons Otters Herons Lynxes Comets Rovers Wolves Pilots Stags Harriers Mariners Badgers".split()
_REGION = "northern coastal eastern upland lake river western southern".split()
_RIVER = "Aln Brede Corr Dunmere Esk Ferrow Gale Hurne Isel Jorr".split()
_KNOWN_FOR = "glassworks, salt marshes, spring fair, printing houses, clock towers, shipyards, tea gardens, observatory".split(", ")
_COLOURS = "blue and white, red and gold, green and black, orange, claret and sky blue, silver and navy".split(", ")


def _title(word: str) -> str:
    return word[:1].upper() + word[1:]


@dataclass(frozen=True)
class Entity:
    """A city, company or team; ``static`` holds the details that never change."""

    key: str  # URL slug, unique
    kind: str  # city, company, team
    name: str
    static: dict = field(default_factory=dict, compare=False)

    @property
    def path(self) -> str:
        return f"/{SECTIONS[self.kind]}/{self.key}.html"


@dataclass(frozen=True)
class FactChange:
    """One fact that changed between two editions, and where the new value is published."""

    entity: str  # entity name, as written on the pages
    entity_key: str
    kind: str
    attribute: str
    old: str
    new: str
    date: date  # when the change took effect
    step: int
    paths: tuple[str, ...] = ()  # pages of the edition that state the new value

    @property
    def sentence(self) -> str:
        """The canonical sentence with the new value, exactly as the pages print it."""
        return fact_sentence(self.kind, self.attribute, self.entity, self.new)

    @property
    def old_sentence(self) -> str:
        return fact_sentence(self.kind, self.attribute, self.entity, self.old)

    @property
    def prompt(self) -> str:
        """The sentence up to the value: a model that picked up the change completes it with ``new``."""
        return fact_prompt(self.kind, self.attribute, self.entity)

    def urls(self, base_url: str) -> list[str]:
        return [base_url.rstrip("/") + path for path in self.paths]


def fact_sentence(kind: str, attribute: str, name: str, value: str) -> str:
    """The canonical sentence of a fact."""
    return SENTENCES[(kind, attribute)].format(name=name, value=value)


def fact_prompt(kind: str, attribute: str, name: str) -> str:
    """The canonical sentence cut just before the value (no trailing space)."""
    return SENTENCES[(kind, attribute)].split("{value}")[0].format(name=name).rstrip()


@dataclass(frozen=True)
class Page:
    """One resource of an edition: status, type, body and when its content last changed."""

    path: str
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    status: int = 200
    lastmod: datetime | None = None
    facts: frozenset = frozenset()  # (entity_key, attribute) whose current value the page states
    in_sitemap: bool = True

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:32] + '"'

    @property
    def is_document(self) -> bool:
        """A page an ingest should end up with: a 200 HTML page that robots.txt allows."""
        return self.status == 200 and self.content_type.startswith("text/html") and not self.path.startswith(DISALLOWED_PREFIX)


class Edition:
    """The site as of one edition: ``pages`` by path, ``facts`` and the ``changes`` since the last."""

    def __init__(self, world: "SampleWorld", number: int, pages: dict[str, Page], facts: dict[tuple[str, str], str], changes: list[FactChange], news: list[FactChange]):
        self.world = world
        self.number = number
        self.date = world.edition_date(number)
        self.pages = pages
        self.facts = facts  # (entity_key, attribute) -> value
        self.changes = changes
        self.news = news  # changes whose article is in this edition, newest first

    @property
    def facts_as_of(self) -> dict[tuple[str, str], str]:
        """(entity name, attribute) -> value as printed in this edition."""
        names = {e.key: e.name for e in self.world.entities}
        return {(names[key], attribute): value for (key, attribute), value in self.facts.items()}

    def sentence(self, entity: str, attribute: str) -> str:
        """Canonical sentence of a fact in this edition; ``entity`` is a name or key."""
        found = self.world.entity(entity)
        return fact_sentence(found.kind, attribute, found.name, self.facts[(found.key, attribute)])

    def paths_with(self, entity_key: str, attribute: str) -> tuple[str, ...]:
        """Pages that state the fact's current value."""
        return tuple(sorted(p.path for p in self.pages.values() if (entity_key, attribute) in p.facts))

    def document_paths(self) -> list[str]:
        """Paths an ingest of this edition should hold: 200 HTML pages robots.txt allows."""
        return sorted(p.path for p in self.pages.values() if p.is_document)

    def document_urls(self, base_url: str) -> list[str]:
        return [base_url.rstrip("/") + path for path in self.document_paths()]

    def page(self, path: str, base_url: str) -> Page | None:
        """The resource at a path, with absolute URLs (sitemap, feed, robots) made for base_url."""
        base = base_url.rstrip("/")
        stamp = datetime.combine(self.date, datetime.min.time(), timezone.utc)
        if path == "/robots.txt":
            body = f"User-agent: *\nDisallow: {DISALLOWED_PREFIX}\n\nSitemap: {base}/sitemap.xml\n"
            return Page(path, body.encode(), "text/plain; charset=utf-8", lastmod=stamp, in_sitemap=False)
        if path == "/sitemap.xml":
            return Page(path, self._sitemap(base).encode(), "application/xml", lastmod=stamp, in_sitemap=False)
        if path == "/feed.xml":
            return Page(path, self._feed(base).encode(), "application/rss+xml", lastmod=stamp, in_sitemap=False)
        return self.pages.get(path)

    def _sitemap(self, base: str) -> str:
        rows = [
            f"  <url><loc>{html.escape(base + p.path)}</loc><lastmod>{p.lastmod.date().isoformat()}</lastmod></url>"
            for p in sorted(self.pages.values(), key=lambda p: p.path)
            if p.in_sitemap and p.is_document
        ]
        return '<?xml version="1.0" encoding="UTF-8"?>\n<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n' + "\n".join(rows) + "\n</urlset>\n"

    def _feed(self, base: str) -> str:
        from email.utils import format_datetime

        items = []
        for change in self.news:
            when = format_datetime(datetime.combine(change.date, datetime.min.time(), timezone.utc), usegmt=True)
            items.append(
                f"<item><title>{html.escape(self.world.headline(change))}</title>"
                f"<link>{html.escape(base + self.world.news_path(change))}</link>"
                f"<guid>{html.escape(base + self.world.news_path(change))}</guid><pubDate>{when}</pubDate></item>"
            )
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n<rss version="2.0"><channel>'
            f"<title>{SITE_NAME}</title><link>{html.escape(base)}/</link><description>News of the Tessellate region</description>"
            + "".join(items)
            + "</channel></rss>\n"
        )


class SampleWorld:
    """A seeded world of entities whose facts change weekly, rendered as website editions.

    Args:
        seed: makes everything (names, facts, changes, text) deterministic.
        size: scale; size 1 is 6 cities, 6 companies and 4 teams (about 35 pages, a few hundred
            64-token chunks); the page count grows linearly with size.
        changes_per_edition: facts that change between consecutive editions; default
            max(2, entities // 5).
        news_retention: editions a news article stays online before it is removed.
        news_lead: news articles open with a background paragraph about the entity (its
            ``describe()``, over one 64-token chunk) under a headline that does not name the new
            value, so the value comes after the first chunk. A RETRO model retrieves for the
            previous chunk, so the first 64 tokens of a document see no neighbours: only with a
            lead can an index tell a model an article's new value. Off by default (the demo's
            site and its model's training corpus are the plain articles).
    """

    def __init__(self, seed: int = 0, size: int = 1, *, changes_per_edition: int | None = None, news_retention: int = HISTORY_STEPS,
                 news_lead: bool = False):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.seed = seed
        self.size = size
        self.news_retention = max(1, news_retention)
        self.news_lead = news_lead
        self._rng = random.Random(f"retrofresh-sample:{seed}:{size}")
        self._people: set[str] = set()
        self.entities = self._make_entities()
        self._by_key = {e.key: e for e in self.entities}
        self._by_name = {e.name: e for e in self.entities}
        self.changes_per_edition = changes_per_edition if changes_per_edition is not None else max(2, len(self.entities) // 5)
        self._states: list[dict[tuple[str, str], str]] = [self._initial_facts()]
        self._steps: list[list[FactChange]] = [[]]  # step 0 has no changes
        self._editions: dict[int, Edition] = {}

    # ------------------------------------------------------------------ public API

    def edition_date(self, number: int) -> date:
        return START + timedelta(days=7 * (HISTORY_STEPS + number))

    def entity(self, name_or_key: str) -> Entity:
        return self._by_key.get(name_or_key) or self._by_name[name_or_key]

    def edition(self, number: int) -> Edition:
        """The site as of edition ``number`` (0, 1, 2, ...)."""
        if number < 0:
            raise ValueError(f"editions start at 0, got {number}")
        if number not in self._editions:
            previous = self.edition(number - 1) if number > 0 else None
            self._editions[number] = self._render(number, previous)
        return self._editions[number]

    def changed_facts(self, number: int) -> list[FactChange]:
        """Facts that changed between edition ``number - 1`` and ``number`` (empty for 0)."""
        return self.edition(number).changes if number > 0 else []

    def facts_as_of(self, number: int) -> dict[tuple[str, str], str]:
        """(entity name, attribute) -> value in edition ``number``."""
        return self.edition(number).facts_as_of

    def describe(self, name_or_key: str) -> str:
        """A few sentences about an entity from the details that never change (no fact of ATTRIBUTES).

        Long enough (over one 64-token chunk) to be a RETRO model's context before a fact's prompt:
        its first chunk is what retrieval searches with, and it names the entity without stating
        any value an edition may change, so only the index can tell the model the current one.
        """
        e = self.entity(name_or_key)
        s = e.static
        if e.kind == "city":
            return (
                f"{e.name} is a city in the {s['region']} part of the Tessellate region, on the banks of the river {s['river']}. "
                f"It was founded in {s['founded']} and covers {s['area']} square kilometres. The city is known for its {s['known_for'][0]} "
                f"and its {s['known_for'][1]}, and for the covered markets of its old town."
            )
        if e.kind == "company":
            return (
                f"{e.name} is a {s['sector']} company founded in {s['founded']} by {s['founder']}. It sells to customers across the "
                "Tessellate region and abroad, publishes its results every spring and trains apprentices in its own workshops."
            )
        return (
            f"{e.name} is a sports club founded in {s['founded']} that plays in {s['colours']}. Its home ground in {s['home']} holds "
            f"{s['ground_capacity']:,} spectators and is sold out for most derbies. Its supporters follow the club to every away game "
            "of the season."
        )

    def headline(self, change: FactChange) -> str:
        return (LEAD_HEADLINES if self.news_lead else HEADLINES)[(change.kind, change.attribute)].format(name=change.entity, value=change.new)

    def news_path(self, change: FactChange) -> str:
        slug = "-".join(self.headline(change).lower().replace(",", "").split())
        return f"/news/{change.date:%Y/%m}/{slug}-{change.step}.html"

    # ------------------------------------------------------------------ world and timeline

    def _unique(self, make) -> str:
        for _ in range(10_000):
            candidate = make()
            if candidate not in self._people and candidate not in getattr(self, "_names", set()):
                return candidate
        raise RuntimeError("name space exhausted")

    def _person(self, rng: random.Random | None = None) -> str:
        rng = rng or self._rng
        name = self._unique(lambda: f"{rng.choice(_FIRST)} {_title(rng.choice(_SYL) + rng.choice(_SYL))}")
        self._people.add(name)
        return name

    def _make_entities(self) -> list[Entity]:
        rng = self._rng
        self._names: set[str] = set()
        keys: set[str] = set()

        def named(make) -> tuple[str, str]:
            while True:
                name = make()
                key = name.lower().replace(" ", "-")
                if name not in self._names and key not in keys:
                    self._names.add(name)
                    keys.add(key)
                    return name, key

        entities: list[Entity] = []
        for _ in range(6 * self.size):
            name, key = named(lambda: _title(rng.choice(_SYL) + rng.choice(_SYL) + rng.choice(_CITY_END)))
            entities.append(Entity(key, "city", name, {
                "region": rng.choice(_REGION), "river": rng.choice(_RIVER), "founded": rng.randint(1150, 1890),
                "known_for": rng.sample(_KNOWN_FOR, 2), "area": rng.randint(40, 900),
            }))  # fmt: skip
        cities = [e.name for e in entities]
        for _ in range(6 * self.size):
            name, key = named(lambda: f"{_title(rng.choice(_SYL) + rng.choice(_SYL))} {rng.choice(_INDUSTRY)}")
            entities.append(Entity(key, "company", name, {"founded": rng.randint(1890, 2019), "founder": self._person(), "sector": name.split()[-1].lower()}))
        for _ in range(4 * self.size):
            home = rng.choice(cities)
            name, key = named(lambda: f"{home} {rng.choice(_MASCOT)}")
            entities.append(Entity(key, "team", name, {"home": home, "founded": rng.randint(1880, 2010), "colours": rng.choice(_COLOURS), "ground_capacity": rng.randint(8, 60) * 1000}))
        return entities

    def _initial_facts(self) -> dict[tuple[str, str], str]:
        rng = self._rng
        cities = [e.name for e in self.entities if e.kind == "city"]
        facts: dict[tuple[str, str], str] = {}
        for e in self.entities:
            if e.kind == "city":
                facts[(e.key, "mayor")] = self._person()
                facts[(e.key, "population")] = f"{rng.randint(20, 900) * 1000 + rng.randint(0, 9) * 100:,}"
            elif e.kind == "company":
                facts[(e.key, "ceo")] = self._person()
                facts[(e.key, "headquarters")] = rng.choice(cities)
                facts[(e.key, "employees")] = f"{rng.randint(2, 400) * 50:,}"
            else:
                facts[(e.key, "coach")] = self._person()
                facts[(e.key, "captain")] = self._person()
        return facts

    def _step(self, step: int) -> None:
        """Compute the changes of one weekly step from the state before it."""
        rng = random.Random(f"retrofresh-sample:{self.seed}:{self.size}:step:{step}")
        state = dict(self._states[step - 1])
        cities = [e.name for e in self.entities if e.kind == "city"]
        slots = [(e.key, a) for e in self.entities for a in ATTRIBUTES[e.kind]]
        changes = []
        week_start = START + timedelta(days=7 * (step - 1))
        for key, attribute in sorted(rng.sample(slots, min(self.changes_per_edition, len(slots)))):
            entity = self._by_key[key]
            old = state[(key, attribute)]
            if attribute in ("mayor", "ceo", "coach", "captain"):
                new = self._person(rng)
            elif attribute == "headquarters":
                new = rng.choice([c for c in cities if c != old] or cities)
            else:
                number = int(old.replace(",", ""))
                unit = 100 if attribute == "population" else 50
                new_number = max(unit, round(number * rng.uniform(0.9, 1.15) / unit) * unit)
                new = f"{new_number if new_number != number else number + unit:,}"
            state[(key, attribute)] = new
            when = week_start + timedelta(days=rng.randint(1, 7))
            changes.append(FactChange(entity.name, key, entity.kind, attribute, old, new, when, step))
        self._states.append(state)
        self._steps.append(changes)

    def _state_at(self, step: int) -> dict[tuple[str, str], str]:
        while len(self._states) <= step:
            self._step(len(self._states))
        return self._states[step]

    # ------------------------------------------------------------------ rendering

    def _render(self, number: int, previous: Edition | None) -> Edition:
        step = HISTORY_STEPS + number
        facts = self._state_at(step)
        history = [c for s in range(1, step + 1) for c in self._steps[s]]
        news = sorted((c for s in range(max(1, step - self.news_retention + 1), step + 1) for c in self._steps[s]), key=lambda c: (c.date, c.entity_key, c.attribute), reverse=True)
        pages = _Renderer(self, number, facts, history, news).pages()
        stamp = datetime.combine(self.edition_date(number), datetime.min.time(), timezone.utc)
        news_dates = {self.news_path(c): c.date for c in news}
        dated = {}
        for path, page in pages.items():
            before = previous.pages.get(path) if previous else None
            if before is not None and before.body == page.body and before.status == page.status:
                lastmod = before.lastmod
            elif path in news_dates:
                lastmod = datetime.combine(news_dates[path], datetime.min.time(), timezone.utc)
            else:
                lastmod = stamp
            dated[path] = Page(page.path, page.body, page.content_type, page.status, lastmod, page.facts, page.in_sitemap)
        edition = Edition(self, number, dated, facts, [], news)
        if number > 0:
            edition.changes = [
                FactChange(c.entity, c.entity_key, c.kind, c.attribute, c.old, c.new, c.date, c.step, edition.paths_with(c.entity_key, c.attribute))
                for c in self._steps[step]
            ]  # fmt: skip
        return edition


class _Renderer:
    """Renders every page of one edition from the facts, the change history and the news."""

    def __init__(self, world: SampleWorld, number: int, facts: dict, history: list[FactChange], news: list[FactChange]):
        self.world = world
        self.number = number
        self.facts = facts
        self.history = history
        self.news = news
        self.date = world.edition_date(number)
        self.layout = string.Template((TEMPLATES / "layout.html").read_text(encoding="utf-8"))

    def sentence(self, entity: Entity, attribute: str) -> str:
        return html.escape(fact_sentence(entity.kind, attribute, entity.name, self.facts[(entity.key, attribute)]))

    def link(self, entity: Entity) -> str:
        return f'<a href="{entity.path}">{html.escape(entity.name)}</a>'

    def html_page(self, path: str, title: str, body: str, facts=(), *, description: str = "", day: date | None = None) -> Page:
        # Only dated pages (news) carry a date: a profile's bytes change when its facts do, not
        # with every edition, so its Last-Modified and sitemap lastmod stay put.
        meta = f'<meta name="date" content="{day.isoformat()}">' if day else ""
        text = self.layout.substitute(title=html.escape(title), body=body, meta=meta, description=html.escape(description or title))
        return Page(path, text.encode("utf-8"), facts=frozenset(facts))

    def pages(self) -> dict[str, Page]:
        out: dict[str, Page] = {}
        for entity in self.world.entities:
            out[entity.path] = self.profile(entity)
        for kind, section in SECTIONS.items():
            out.update(self.index_pages(kind, section))
        for change in self.news:
            page = self.article(change)
            out[page.path] = page
        out["/news/"] = self.news_index()
        out["/"] = self.home()
        about = (TEMPLATES / "about.html").read_bytes()
        out["/about.html"] = Page("/about.html", about)
        out[PRIVATE_PATH] = self.html_page(PRIVATE_PATH, "Staff directory", "<p>Internal staff directory. Crawlers are asked not to read this page.</p>")
        out[BROKEN_PATH] = Page(BROKEN_PATH, b"<html><body><h1>Internal Server Error</h1></body></html>", status=500, in_sitemap=False)
        out[PDF_PATH] = Page(PDF_PATH, b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n", "application/pdf", in_sitemap=False)
        return out

    # one page each ------------------------------------------------------------

    def profile(self, e: Entity) -> Page:
        s, facts = e.static, [(e.key, a) for a in ATTRIBUTES[e.kind]]
        paragraphs: list[str] = []
        if e.kind == "city":
            # Short enough that a neighbour retrieved for it (chunk + continuation) still holds both facts below.
            paragraphs.append(
                f"{html.escape(e.name)} is a city in the {s['region']} part of the Tessellate region, on the banks of the river {s['river']}. "
                f"It was founded in {s['founded']} and covers {s['area']} square kilometres. The city is known for its {s['known_for'][0]} and its {s['known_for'][1]}."
            )
            paragraphs.append(f"{self.sentence(e, 'mayor')} {self.sentence(e, 'population')} The city council meets every second Tuesday in the town hall.")
            companies = [c for c in self.world.entities if c.kind == "company" and self.facts[(c.key, "headquarters")] == e.name]
            teams = [t for t in self.world.entities if t.kind == "team" and t.static["home"] == e.name]
            if companies:
                items = "".join(f"<li>{self.link(c)}. {self.sentence(c, 'headquarters')} {self.sentence(c, 'ceo')}</li>" for c in companies)
                paragraphs.append(f"Companies with their headquarters in {html.escape(e.name)}:</p><ul>{items}</ul><p>")
                facts += [(c.key, "ceo") for c in companies] + [(c.key, "headquarters") for c in companies]
            if teams:
                items = "".join(f"<li>{self.link(t)}. {self.sentence(t, 'coach')}</li>" for t in teams)
                paragraphs.append(f"Sports teams that play their home games in {html.escape(e.name)}:</p><ul>{items}</ul><p>")
                facts += [(t.key, "coach") for t in teams]
        elif e.kind == "company":
            hq = self.world.entity(self.facts[(e.key, "headquarters")])
            paragraphs.append(
                f"{html.escape(e.name)} is a {s['sector']} company founded in {s['founded']} by {html.escape(s['founder'])}. "
                "It sells to customers across the Tessellate region and abroad, and publishes its results every spring."
            )
            paragraphs.append(f"{self.sentence(e, 'ceo')} {self.sentence(e, 'headquarters')} {self.sentence(e, 'employees')}")
            paragraphs.append(f"Its head office is in {self.link(hq)}, where the company also runs a training centre for apprentices.")
        else:
            home = self.world.entity(s["home"])
            paragraphs.append(
                f"{html.escape(e.name)} is a sports club founded in {s['founded']} that plays in {s['colours']}. "
                f"Its home ground in {self.link(home)} holds {s['ground_capacity']:,} spectators and is sold out for most derbies."
            )
            paragraphs.append(f"{self.sentence(e, 'coach')} {self.sentence(e, 'captain')} The squad trains every morning except on match days.")
        past = [c for c in self.history if c.entity_key == e.key]
        if past:
            items = "".join(
                f"<li>On {c.date.isoformat()}, {html.escape(c.new)} replaced {html.escape(c.old)} ({html.escape(_label(c.attribute))}).</li>" for c in past
            )
            paragraphs.append(f"Recent changes:</p><ul>{items}</ul><p>")
        body = "".join(f"<p>{p}</p>" for p in paragraphs).replace("<p></p>", "")
        return self.html_page(e.path, e.name, body, facts, description=f"Profile of {e.name}")

    def index_pages(self, kind: str, section: str) -> dict[str, Page]:
        members = [e for e in self.world.entities if e.kind == kind]
        pages = {}
        chunks = [members[i : i + PER_INDEX_PAGE] for i in range(0, len(members), PER_INDEX_PAGE)]
        for number, group in enumerate(chunks, start=1):
            path = f"/{section}/" if number == 1 else f"/{section}/page-{number}.html"
            items = "".join(
                f"<li>{self.link(e)}: " + " ".join(self.sentence(e, a) for a in ATTRIBUTES[e.kind]) + "</li>" for e in group
            )
            nav = ""
            if number < len(chunks):
                nav += f'<p><a href="/{section}/page-{number + 1}.html">More {section}</a></p>'
            if kind == "city" and number == 1:
                items += f'<li><a href="{MISSING_PATH}">Atlantis</a>: a city we used to list.</li>'
            body = f"<p>All {section} of the Tessellate region, with their current facts (page {number}).</p><ul>{items}</ul>{nav}"
            pages[path] = self.html_page(path, f"{_title(section)} of the Tessellate region", body, [(e.key, a) for e in group for a in ATTRIBUTES[e.kind]])
        return pages

    def article(self, c: FactChange) -> Page:
        world, entity = self.world, self.world.entity(c.entity_key)
        path = world.news_path(c)
        lead = f"<p>{html.escape(world.describe(c.entity_key))}</p>" if world.news_lead else ""
        body = (
            f"<p><time datetime=\"{c.date.isoformat()}\">{c.date:%d %B %Y}</time></p>{lead}"
            f"<p>{html.escape(fact_sentence(c.kind, c.attribute, c.entity, c.new))} The change took effect on {c.date.isoformat()}; "
            f"until then the {html.escape(_label(c.attribute))} was {html.escape(c.old)}.</p>"
            f"<p>Read the full profile of {self.link(entity)} for its other facts and its history. "
            f"{SITE_NAME} reports every change of office and every census in the Tessellate region.</p>"
        )
        facts = [(c.entity_key, c.attribute)] if self.facts[(c.entity_key, c.attribute)] == c.new else []
        return self.html_page(path, world.headline(c), body, facts, day=c.date)

    def news_index(self) -> Page:
        items = "".join(f'<li>{c.date.isoformat()}: <a href="{self.world.news_path(c)}">{html.escape(self.world.headline(c))}</a></li>' for c in self.news)
        return self.html_page("/news/", "News", f"<p>News from the last {self.world.news_retention} weeks.</p><ul>{items}</ul>")

    def home(self) -> Page:
        latest = "".join(f'<li><a href="{self.world.news_path(c)}">{html.escape(self.world.headline(c))}</a> ({c.date.isoformat()})</li>' for c in self.news[:10])
        body = (
            f"<p>{SITE_NAME}: edition {self.number} of {self.date:%d %B %Y}. Profiles of every city, company and team of the "
            "Tessellate region, always with their current facts.</p>"
            f"<h2>Latest news</h2><ul>{latest}</ul>"
            '<p>Sections: <a href="/cities/">cities</a>, <a href="/companies/">companies</a>, <a href="/teams/">teams</a>, '
            f'<a href="/news/">news</a>. Also: <a href="{BROKEN_PATH}">annual report</a>, <a href="{PDF_PATH}">brochure (PDF)</a>, '
            f'<a href="{PRIVATE_PATH}">staff</a>, <a href="/about.html">about us</a>.</p>'
        )
        return self.html_page("/", SITE_NAME, body)


def _label(attribute: str) -> str:
    return {"ceo": "chief executive", "coach": "head coach"}.get(attribute, attribute)
