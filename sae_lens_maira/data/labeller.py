"""Rule-based finding labels for (generated) radiology report text.

Each sentence is searched for mentions of a finding (synonym patterns); each mention gets a
status from NegEx-style triggers (Chapman et al. 2001) with ConText-like scope: a pre-trigger
("no", "without", "negative for", "free of", "resolved", ...) negates mentions up to
``SCOPE_TOKENS`` tokens later in the same clause, a clause ending at "but", "however", ";",
"which", ...; post-triggers ("... has resolved", "... is not seen") negate from behind. Whole
phrases can state a finding's absence on their own ("heart size is normal", "costophrenic angles
are clear"). Uncertainty ("possible", "may", "cannot be excluded", "borderline", ...) gives
``uncertain``. A report is ``positive`` for a finding if any mention is, else ``uncertain``,
else ``negated``, else ``absent`` (CheXpert's order).

Why our own rules: the lean offline options were checked. negspacy covers negation only (no
uncertainty) and brings spaCy; medspacy's ConText would add uncertainty but pins old spaCy and
downgrades numpy. The patterns here are short, tested on real Open-I sentences, and checked
against the collection's MeSH labels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum


class Status(str, Enum):
    """How a report speaks of a finding."""

    POSITIVE = "positive"
    NEGATED = "negated"
    UNCERTAIN = "uncertain"
    ABSENT = "absent"

    def __str__(self) -> str:
        return self.value


#: Tokens after a pre-negation trigger that stay in its scope (NegEx uses 5; report lists like
#: "no focal consolidation, pneumothorax, or large pleural effusion" need more).
SCOPE_TOKENS = 10

_NEG_PRE = re.compile(
    r"\b(no|not|without|negative for|free of|clear of|absence of|absent|resolved|resolution of|"
    r"removal of|removed|no longer|nor|denies|never)\b"
)
_NEG_POST = re.compile(
    r"^[\s,]*(?:\w+\s+){0,3}?(?:is|are|has|have|was|were)?\s*(?:now\s+|also\s+|again\s+)?(?:been\s+)?"
    r"(?:resolved|removed|absent|gone|withdrawn|"
    r"not\s+(?:seen|identified|present|visualized|visible|appreciated|evident|demonstrated|noted)|"
    r"no\s+longer\s+(?:seen|present|visualized|visible|identified|evident))\b"
)
#: Uncertainty phrases that contain a negation word: checked before negation.
_UNC_NEGWORD = re.compile(
    r"\b(cannot|can not|could not|can't|not)\s+(?:be\s+)?(?:entirely\s+|completely\s+|totally\s+)?"
    r"(?:excluded|exclude|ruled out|rule out)\b|\bno definite evidence against\b"
)
_UNC_PRE = re.compile(
    r"\b(possible|possibly|probable|probably|likely|may|might|could|questionable|question of|"
    r"questioned|suspicious|suspected|suspect|suggests?|suggestive|suggesting|concern for|"
    r"concerning for|borderline|equivocal|indeterminate|consider|rule out|r/o|presumed|"
    r"presumably|versus|vs|differential|cannot exclude|cannot rule out|evaluat\w* for|assess\w* for|"
    r"and/or)\b"
)
_UNC_POST = re.compile(
    r"^[\s,]*(?:\w+\s+){0,3}?(?:(?:is|are)\s+(?:possible|suspected|questioned|likely|probable|not excluded)|"
    r"(?:cannot|can not|could not)\s+be\s+(?:excluded|ruled out)|\?)|^[^.;]*?\bwhich\s+(?:may|might|could|can|likely|probably)\b"
)
_TERMINATORS = re.compile(
    r"\b(but|however|although|though|except|aside from|apart from|which|whereas|yet|otherwise)\b|[;:]|"
    r"(?:\band\b|,)\s+there\s+(?:is|are|has been|have been)\b(?!\s+no\b)"
)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")
_LIST_NUMBER = re.compile(r"\d{1,2}[.)]")
_WORD = re.compile(r"[\w'/-]+")


@dataclass(frozen=True)
class FindingRule:
    """How a finding is mentioned.

    ``mentions``: regexes for a mention (lower-cased text). ``absent_phrases``: regexes that by
    themselves say the finding is absent ("heart size is normal"). ``uncertain_phrases``:
    regexes that say it is borderline. ``exclusions``: spans removed before matching
    (e.g. "pericardial effusion" is not a pleural effusion).
    """

    name: str
    mentions: tuple[str, ...]
    absent_phrases: tuple[str, ...] = ()
    uncertain_phrases: tuple[str, ...] = ()
    exclusions: tuple[str, ...] = ()
    _compiled: dict = field(default_factory=dict, compare=False, repr=False)

    def compiled(self) -> dict[str, list[re.Pattern]]:
        if not self._compiled:
            for key in ("mentions", "absent_phrases", "uncertain_phrases", "exclusions"):
                self._compiled[key] = [re.compile(p) for p in getattr(self, key)]
        return self._compiled


_HEART = r"(?:heart|cardiac silhouette|cardiac shadow|cardiac contours?|cardiac size|heart size|cardiomediastinal (?:silhouette|contours?|shadow)|cardiac)"
_ENLARGED = r"(?:(?:mildly|moderately|markedly|severely|slightly|massively|again|stably|still|significantly|minimally|borderline)\s+)*(?:enlarged|enlargement|increased)"

CARDIOMEGALY = FindingRule(
    name="cardiomegaly",
    mentions=(
        r"\bcardiomegaly\b",
        r"\bcardiac enlargement\b",
        r"\benlarge(?:d|ment of the)\s+(?:heart|cardiac silhouette|cardiac shadow|cardiomediastinal silhouette)\b",
        rf"\b{_HEART}\b(?:\s+\w+){{0,4}}?\s+(?:is|are|appears?|remains?|was|size is)?\s*{_ENLARGED}\b",
        rf"\b{_HEART}\b(?:\s+\w+){{0,3}}?\s+(?:is|are|appears?|remains?|was)\s+(?:\w+\s+)?(?:large|big)\b",
        r"\b(?:large|enlarged)\s+heart\b",
    ),
    absent_phrases=(
        rf"\b{_HEART}\b[\w\s,/]{{0,60}}?\b(?:is|are|appears?|remains?|was|were)?\s*(?:\w+\s+)?(?:within normal limits|normal|unremarkable|not enlarged|upper limits? of normal)\b",
        r"\bnormal(?:-|\s+)(?:sized\s+)?(?:heart|cardiac|cardiomediastinal)\b",
        r"\bheart\s+(?:is\s+)?(?:of\s+)?normal\s+size\b",
        rf"\b{_HEART}\b[\w\s,]{{0,40}}?\bnormal(?:\s+in)?\s+size\b",
    ),
    uncertain_phrases=(
        rf"\b{_HEART}\b[\w\s,]{{0,40}}?\b(?:upper limits? of normal|upper normal|top normal|top-normal|borderline|at the upper limit)",
        rf"\b(?:borderline|upper normal|top normal|top-normal)\s+(?:\w+\s+)?{_HEART}",
        rf"\b{_HEART}\b[\w\s,]{{0,30}}?\b(?:is|are|appears?|remains?)?\s*(?:mildly\s+|slightly\s+)?prominent\b",
    ),
)

PLEURAL_EFFUSION = FindingRule(
    name="pleural_effusion",
    mentions=(
        r"\beffusions?\b",
        r"\bpleural fluid\b",
        r"\bfluid\s+(?:in|within)\s+the\s+(?:\w+\s+)?(?:pleural space|fissures?|costophrenic)",
        r"\bhydro(?:pneumo)?thorax\b",
        r"\bblunt(?:ed|ing)?\s+(?:of\s+)?(?:the\s+)?(?:\w+\s+){0,2}?(?:costophrenic|cp)\s+(?:angles?|sulc\w+|recess\w*)",
        r"\b(?:costophrenic|cp)\s+(?:angles?|sulc\w+|recess\w*)\s+(?:is|are)?\s*(?:\w+\s+)?(?:blunt\w*|obliterat\w+|obscured)",
        r"\blayering fluid\b",
    ),
    absent_phrases=(
        r"\b(?:costophrenic|cp)\s+(?:angles?|sulc\w+|recess\w*)\s+(?:are|is)\s+(?:\w+\s+)?(?:clear|sharp|preserved|normal|free)\b",
        r"\bsharp\s+(?:\w+\s+)?(?:costophrenic|cp)\s+(?:angles?|sulc\w+)",
        r"\bpleural\s+spaces?\s+(?:are|is)\s+(?:\w+\s+)?(?:clear|normal|unremarkable)\b",
    ),
    exclusions=(r"\b(?:pericardial|joint|knee|shoulder|subpulmonic pericardial)\s+effusions?\b",),
)

DEVICES = FindingRule(
    name="devices",
    mentions=(
        r"\bpacemakers?\b",
        r"\bpacers?\b",
        r"\b(?:aicd|icd|defibrillators?)\b",
        r"\b(?:pacemaker|pacer|pacing|cardiac|defibrillator|icd|aicd|transvenous|monitor|monitoring|ecg|ekg|epicardial)\s+(?:leads?|wires?|generators?|devices?)\b",
        r"\b(?:pacing|epicardial|guide|ecg|ekg|monitoring|monitor)\s*wires?\b",
        r"\bleads?\s+(?:overl\w+|terminat\w+|project\w*|tips?|extend\w*|in\s+(?:the\s+)?(?:right|left))\b",
        r"\bcatheters?\b",
        r"\b(?:picc|portacath|port-a-cath|porta-cath|mediport)\b",
        r"\bport\b",
        r"\b(?:central|venous|picc|swan[- ]ganz|dialysis|subclavian|jugular|ij|arterial|midline)\s+(?:venous\s+)?(?:catheters?|lines?)\b",
        r"\bgenerators?\b",
        r"\b(?:distal\s+)?tips?\s+(?:is\s+|are\s+)?(?:at|in|within|overl\w+|project\w*|terminat\w+|near|just)\b",
        r"\blines?\s+(?:tips?|terminat\w+|courses?|coursing|extends?|ending|projects?|in\s+(?:the\s+)?(?:svc|right atrium))\b",
        r"\b(?:lines?|tubes?)\s+(?:or|and)\s+(?:lines?|tubes?)\b",
        r"\btubes?\b",
        r"\b(?:ett|ngt|ng|og|dobhoff)\b",
        r"\b(?:support|medical|cardiac|implanted|implantable|closure|monitoring)\s+devices?\b",
        r"\bloop recorder\b",
        r"\belectrodes?\b",
    ),
    exclusions=(r"\bmidline\s+(?:trachea|structures?)\b", r"\btrachea\s+is\s+midline\b"),
)

FINDING_RULES: dict[str, FindingRule] = {
    r.name: r for r in (CARDIOMEGALY, PLEURAL_EFFUSION, DEVICES)
}
DEFAULT_FINDINGS: tuple[str, ...] = tuple(FINDING_RULES)


@dataclass(frozen=True)
class Mention:
    """One mention (or absence phrase) of a finding in a sentence, with its status."""

    finding: str
    status: Status
    sentence: str
    text: str
    start: int
    end: int
    trigger: str | None = None


def split_sentences(text: str) -> list[str]:
    """Sentences (and numbered list items) of a report, stripped, empties dropped."""
    parts = [p.strip() for p in _SENTENCE_SPLIT.split(text or "") if p and p.strip()]
    out: list[str] = []
    for part in parts:
        if out and _LIST_NUMBER.fullmatch(out[-1]):
            out[-1] = f"{out[-1]} {part}"  # "1." belongs to the item it numbers
        else:
            out.append(part)
    return out


def _resolve(findings: Sequence[str | FindingRule]) -> list[FindingRule]:
    rules = []
    for f in findings:
        if isinstance(f, FindingRule):
            rules.append(f)
        elif f in FINDING_RULES:
            rules.append(FINDING_RULES[f])
        else:
            raise ValueError(
                f"unknown finding {f!r}; known: {sorted(FINDING_RULES)} (or pass a FindingRule)"
            )
    return rules


def _clause_before(sentence: str, start: int) -> str:
    """Text from the last scope terminator before ``start`` up to ``start``."""
    before = sentence[:start]
    last = 0
    for m in _TERMINATORS.finditer(before):
        last = m.end()
    return before[last:]


def _mention_status(sentence: str, start: int, end: int) -> tuple[Status, str | None]:
    inner = _NEG_PRE.search(sentence[start:end])  # "heart is not enlarged" matched as one span
    if inner and not _UNC_NEGWORD.search(sentence[start:end]):
        return Status.NEGATED, inner.group(0)
    clause = _clause_before(sentence, start)
    after = sentence[end:]
    cut = _TERMINATORS.search(after)
    after_clause = after[: cut.start()] if cut else after
    m = _UNC_NEGWORD.search(clause) or _UNC_NEGWORD.search(after_clause)
    if m:
        return Status.UNCERTAIN, m.group(0)
    pre = list(_NEG_PRE.finditer(clause))
    if pre and len(_WORD.findall(clause[pre[-1].end() :])) <= SCOPE_TOKENS:
        return Status.NEGATED, pre[-1].group(0)
    m = _NEG_POST.search(after_clause)
    if m:
        return Status.NEGATED, m.group(0).strip()
    unc = list(_UNC_PRE.finditer(clause))
    if unc and len(_WORD.findall(clause[unc[-1].end() :])) <= SCOPE_TOKENS:
        return Status.UNCERTAIN, unc[-1].group(0)
    m = _UNC_POST.search(after_clause) or _UNC_POST.search(after)
    if m:
        return Status.UNCERTAIN, m.group(0).strip()
    return Status.POSITIVE, None


def find_mentions(
    text: str, findings: Sequence[str | FindingRule] = DEFAULT_FINDINGS
) -> list[Mention]:
    """Every mention of the findings in ``text``, sentence by sentence, with its status."""
    rules = _resolve(findings)
    out: list[Mention] = []
    for sentence in split_sentences(text):
        low = sentence.lower()
        for rule in rules:
            pats = rule.compiled()
            masked = low
            for ex in pats["exclusions"]:
                masked = ex.sub(lambda m: " " * len(m.group(0)), masked)
            spans: list[tuple[int, int]] = []
            for unc in pats["uncertain_phrases"]:
                for m in unc.finditer(masked):
                    out.append(
                        Mention(
                            rule.name,
                            Status.UNCERTAIN,
                            sentence,
                            m.group(0),
                            m.start(),
                            m.end(),
                            "phrase",
                        )
                    )
                    spans.append(m.span())
            for pat in pats["mentions"]:
                for m in pat.finditer(masked):
                    if any(a <= m.start() < b for a, b in spans):
                        continue
                    status, trigger = _mention_status(masked, m.start(), m.end())
                    out.append(
                        Mention(
                            rule.name, status, sentence, m.group(0), m.start(), m.end(), trigger
                        )
                    )
                    spans.append(m.span())
            for ab in pats["absent_phrases"]:
                for m in ab.finditer(masked):
                    if any(a <= m.start() < b or m.start() <= a < m.end() for a, b in spans):
                        continue
                    out.append(
                        Mention(
                            rule.name,
                            Status.NEGATED,
                            sentence,
                            m.group(0),
                            m.start(),
                            m.end(),
                            "phrase",
                        )
                    )
    return out


_PRIORITY = (Status.POSITIVE, Status.UNCERTAIN, Status.NEGATED)


def label_report(
    text: str, findings: Sequence[str | FindingRule] = DEFAULT_FINDINGS
) -> dict[str, Status]:
    """Status per finding for one report: positive > uncertain > negated > absent."""
    rules = _resolve(findings)
    seen: dict[str, set[Status]] = {r.name: set() for r in rules}
    for mention in find_mentions(text, rules):
        seen[mention.finding].add(mention.status)
    return {
        name: next((s for s in _PRIORITY if s in got), Status.ABSENT) for name, got in seen.items()
    }


def label_reports(
    texts: Iterable[str], findings: Sequence[str | FindingRule] = DEFAULT_FINDINGS
) -> list[dict[str, Status]]:
    """:func:`label_report` for each text."""
    rules = _resolve(findings)
    return [label_report(t, rules) for t in texts]


def mention_rates(
    texts: Iterable[str], findings: Sequence[str | FindingRule] = DEFAULT_FINDINGS
) -> dict[str, dict[str, float]]:
    """Fraction of reports per finding and status, e.g. ``rates["devices"]["positive"]``.

    Use it to compare generated reports with references, or steered with unsteered runs.
    """
    labels = label_reports(texts, findings)
    if not labels:
        raise ValueError("mention_rates needs at least one report text")
    names = list(labels[0])
    return {
        name: {s.value: sum(lab[name] is s for lab in labels) / len(labels) for s in Status}
        for name in names
    }
