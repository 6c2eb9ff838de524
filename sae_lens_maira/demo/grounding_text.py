"""Label-driven grounding targets: short findings made of real report sentences.

A full report is mostly language the image does not decide ("The mediastinum is unremarkable.",
"No acute bony abnormality.") and says the same finding in many ways: trained on full reports
from the start, a small model learns the templates and ignores the picture. A grounding target
states only what the picture shows, one sentence per finding, and always in the same words for
the same picture: the sentence training reports use most often for that class (heart enlarged
or normal; effusion left, right or bilateral, or none; each kind of device). Every token then
depends on the image alone, so a short warm-up on these targets teaches the model to read the
image before it learns the reports' long tail, in the reports' own words.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from sae_lens_maira.data.labeller import Status, find_mentions, split_sentences
from sae_lens_maira.data.study import Study
from sae_lens_maira.data.synthetic_xray import FINDING_DETAILS

#: A finding's absence is stated in grounding targets only when at least this share of negative
#: reports states it (heart size and effusions are routinely negated; devices are not).
ROUTINE_NEGATION = 0.25
#: Longer sentences describe more than the finding; they are not used as grounding targets.
MAX_WORDS = 12


def _classes(study: Study, finding: str) -> list[str]:
    """What the picture shows for ``finding``: e.g. ``["pleural_effusion:left"]``,
    ``["devices:pacemaker", "devices:central_line"]`` or ``["cardiomegaly:absent"]``."""
    if not study.labels.get(finding):
        return [f"{finding}:absent"]
    render = study.meta.get("render") or {}
    detail = render.get(FINDING_DETAILS.get(finding, ""))  # a side, or a list of device kinds
    if detail:
        return [f"{finding}:{d}" for d in ([detail] if isinstance(detail, str) else detail)]
    return [f"{finding}:present"]


@dataclass
class GroundingSentences:
    """The most common label-consistent report sentence per finding class."""

    findings: tuple[str, ...]
    sentences: dict[str, str]  # class -> sentence

    @classmethod
    def from_studies(cls, studies: Sequence[Study], findings: Sequence[str]) -> GroundingSentences:
        """Count, over ``studies``, the sentences whose mention agrees with the study's label
        (positive for positives, negated for negatives); studies showing one class only vote."""
        findings = tuple(findings)
        votes: dict[str, Counter] = defaultdict(Counter)
        n_negative: Counter = Counter()
        for study in studies:
            for f in findings:
                n_negative[f] += not study.labels.get(f)
            seen: set[str] = set()
            for m in find_mentions(study.findings or "", findings):
                label = bool(study.labels.get(m.finding))
                wanted = Status.POSITIVE if label else Status.NEGATED
                classes = _classes(study, m.finding)
                if m.status is not wanted or len(classes) != 1 or m.finding in seen:
                    continue
                if len(m.sentence.split()) > MAX_WORDS:
                    continue
                seen.add(m.finding)
                votes[classes[0]][m.sentence] += 1
        sentences = {}
        for klass, counter in votes.items():
            finding = klass.split(":")[0]
            if klass.endswith(":absent") and (
                sum(counter.values()) < ROUTINE_NEGATION * max(n_negative[finding], 1)
            ):
                continue
            # most common; ties go to the shorter sentence, then alphabetical (deterministic)
            sentences[klass] = min(counter, key=lambda s: (-counter[s], len(s), s))
        return cls(findings, sentences)

    def normalized_report(self, study: Study) -> str:
        """The study's report with its finding sentences replaced by the grounding target, first.

        Sentences of the report that mention none of the findings follow in their order, so
        the result reads like a report whose first sentences the image decides.
        """
        target = self.target(study)
        mentioned = {m.sentence for m in find_mentions(study.findings or "", self.findings)}
        rest = [s for s in split_sentences(study.findings or "") if s not in mentioned]
        return " ".join([target, *rest]).strip() if target else ""

    def target(self, study: Study) -> str:
        """The grounding findings for ``study`` (empty when no class has a sentence)."""
        out: list[str] = []
        for f in self.findings:
            for klass in _classes(study, f):
                sentence = self.sentences.get(klass)
                if sentence and sentence not in out:
                    out.append(sentence)
        return " ".join(out)
