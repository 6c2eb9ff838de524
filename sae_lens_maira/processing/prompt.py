"""MAIRA-2's prompts as sequences of role-labelled pieces.

A prompt is built as a list of :class:`Piece` (text with a role, or an image placeholder) so that
each character of the rendered text, and later each token, knows what it is. Wording follows
MAIRA-2's processor: findings generation (with frontal / lateral / prior images, indication,
technique, comparison, prior report; ``N/A`` for missing sections), grounded reporting and phrase
grounding. The chat wrapper comes from the checkpoint's ``chat_template`` when it has one.
"""

from __future__ import annotations

from dataclasses import dataclass

from sae_lens_maira.processing.roles import Role

SYSTEM_PROMPT = (
    "You are an expert radiology assistant tasked with interpreting a chest X-ray study."
)
NOT_AVAILABLE = "N/A"
FINDINGS_INSTRUCTION = (
    "Provide a structured description of the findings in the radiology study in comparison to the "
    "prior frontal image."
)
GROUNDED_INSTRUCTION = (
    "Each finding should be described as a self-contained plain-text sentence. If the finding is "
    "groundable, locate the finding in the current frontal chest X-ray image, with bounding boxes "
    "indicating all locations where it can be seen in the current frontal image. Otherwise, "
    "generate just the ungrounded finding without bounding boxes."
)
PHRASE_GROUNDING_INSTRUCTION = (
    "Repeat the following finding as a grounded phrase with bounding boxes indicating all "
    "locations where it can be seen in the given chest X-ray image."
)


@dataclass(frozen=True)
class Piece:
    """A run of prompt text with one role, or an image placeholder (``text is None``)."""

    text: str | None
    role: Role = Role.BOILERPLATE
    image_slot: int = -1  # 0 current frontal, 1 current lateral, 2 prior frontal

    @property
    def is_image(self) -> bool:
        return self.text is None


@dataclass(frozen=True)
class ChatFormat:
    """The default Vicuna-style wrapper: ``{system} USER: {user} ASSISTANT:``.

    Used when the tokenizer carries no ``chat_template``; keep it fixed so the small default's
    prompts never change under a trained model.
    """

    user_prefix: str = " USER: "
    assistant_prefix: str = " ASSISTANT:"

    def wrap(self, system: list[Piece], user: list[Piece]) -> list[Piece]:
        return [*system, Piece(self.user_prefix), *user, Piece(self.assistant_prefix)]


def _section(name: str, value: str | None, role: Role) -> list[Piece]:
    text = value.strip() if value and value.strip() else NOT_AVAILABLE
    return [Piece(f" {name}: "), Piece(text, role)]


def _image_phrase(has_lateral: bool, has_prior: bool) -> list[Piece]:
    frontal, lateral, prior = (Piece(None, Role.IMAGE_FIRST, s) for s in (0, 1, 2))
    if not has_lateral and not has_prior:
        return [Piece("Given the current frontal image only"), frontal]
    if has_lateral and not has_prior:
        return [
            Piece("Given the current frontal image"),
            frontal,
            Piece(" and the current lateral image"),
            lateral,
        ]
    if has_prior and not has_lateral:
        return [
            Piece("Given the current frontal image"),
            frontal,
            Piece(" and the prior frontal image"),
            prior,
        ]
    return [
        Piece("Given the current frontal image"),
        frontal,
        Piece(" the current lateral image"),
        lateral,
        Piece(" and the prior frontal image"),
        prior,
    ]


def findings_user_pieces(
    *,
    has_lateral: bool,
    has_prior: bool,
    indication: str | None = None,
    technique: str | None = None,
    comparison: str | None = None,
    prior_report: str | None = None,
    grounded: bool = False,
) -> list[Piece]:
    """The user turn of a findings-generation (or grounded-reporting) prompt."""
    pieces = _image_phrase(has_lateral, has_prior)
    if has_prior:
        pieces += _section("PRIOR_REPORT", prior_report, Role.PRIOR_REPORT)
    pieces.append(Piece(" " + FINDINGS_INSTRUCTION))
    if grounded:
        pieces.append(Piece(" " + GROUNDED_INSTRUCTION))
    pieces += _section("INDICATION", indication, Role.INDICATION)
    pieces += _section("TECHNIQUE", technique, Role.TECHNIQUE)
    pieces += _section("COMPARISON", comparison, Role.COMPARISON)
    return pieces


def phrase_grounding_user_pieces(phrase: str) -> list[Piece]:
    if not phrase or not phrase.strip():
        raise ValueError("phrase grounding needs a non-empty finding phrase")
    return [
        Piece("Given the current frontal image"),
        Piece(None, Role.IMAGE_FIRST, 0),
        Piece(" " + PHRASE_GROUNDING_INSTRUCTION + " Finding: "),
        Piece(phrase.strip(), Role.PHRASE),
    ]


def system_pieces() -> list[Piece]:
    return [Piece(SYSTEM_PROMPT)]
