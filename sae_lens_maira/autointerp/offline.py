"""A deterministic explainer and scorer without an LLM, for tests and for users without one.

The explainer names what is over-represented among the marked (activating) positions of the top
examples compared with all positions of random contexts: tokens, the prompt section (role), or a
block of image patches. The scorer reads an explanation back (quoted tokens, an image block, a
section name, else its content words) and predicts that an example activates when it contains it.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from sae_lens_maira.autointerp.examples import Shown, image_token
from sae_lens_maira.dashboards.feature_stats import GAP
from sae_lens_maira.processing.roles import Role

_SECTION = {int(r): r.name.lower().replace("_", " ") for r in Role}
_STOP = set("a an the of in on and or to is are with for by at fires feature tokens token text word words "
            "image patches patch region rows cols section when about".split())  # fmt: skip
_BOX = re.compile(r"(\w+) image patches in rows (\d+)-(\d+), cols (\d+)-(\d+)")
_SECTION_RE = re.compile(r"anywhere in the (\w[\w ]*?) section")


def _norm(tok: str) -> str:
    return tok.replace("▁", "").strip().lower()


class OfflineExplainer:
    name = "offline-contrast"

    def __init__(self, slot_names: tuple[str, ...], max_tokens: int = 3):
        self.slot_names, self.max_tokens = slot_names, max_tokens

    def explain(self, examples: list[Shown], baseline: list[Shown]) -> str:
        if not examples:
            return "never fires in the data seen"
        act_tok, act_img, act_role = Counter(), [], Counter()
        n_marked = 0
        for s in examples:
            for tok, m, role in zip(s.tokens, s.marked, s.example.roles, strict=True):
                if not m or tok == GAP:
                    continue
                n_marked += 1
                act_role[role] += 1
                pos = image_token(tok)
                if pos is not None:
                    act_img.append(pos)
                elif _norm(tok):
                    act_tok[_norm(tok)] += 1
        base_tok = Counter(_norm(t) for s in baseline for t in s.tokens if image_token(t) is None)
        base_role = Counter(r for s in baseline for r in s.example.roles)
        n_base = max(sum(base_tok.values()), 1)
        if len(act_img) >= max(1, n_marked // 2):
            return self._image(act_img)
        # tokens: lift against the baseline, weighted by how many marked positions they cover
        n_act = max(sum(act_tok.values()), 1)
        v = len(base_tok) + len(act_tok) + 1
        scored = []
        for tok, c in act_tok.items():
            lift = ((c + 0.5) / (n_act + v)) / ((base_tok[tok] + 0.5) / (n_base + v))
            if lift > 1.5:
                scored.append((c / n_act * math.log(lift), tok))
        scored.sort(key=lambda x: (-x[0], x[1]))
        role, rc = act_role.most_common(1)[0]
        if scored and scored[0][0] >= 0.05:
            toks = [t for _, t in scored[: self.max_tokens]]
            quoted = ", ".join(f'"{t}"' for t in toks)
            return f"fires on the tokens {quoted} (mostly in the {_SECTION.get(role, 'prompt')} section)"
        base_share = base_role[role] / max(sum(base_role.values()), 1)
        return f"fires anywhere in the {_SECTION.get(role, 'prompt')} section (covers {rc / max(n_marked, 1):.0%} of activations vs {base_share:.0%} of tokens)"

    def _image(self, patches: list[tuple[int, int, int]]) -> str:
        img = Counter(p[0] for p in patches).most_common(1)[0][0]
        rows = sorted(p[1] for p in patches if p[0] == img)
        cols = sorted(p[2] for p in patches if p[0] == img)
        q = lambda xs, f: xs[min(int(f * len(xs)), len(xs) - 1)]  # noqa: E731
        r0, r1, c0, c1 = q(rows, 0.05), q(rows, 0.95), q(cols, 0.05), q(cols, 0.95)
        slot = self.slot_names[img] if img < len(self.slot_names) else f"image{img}"
        return f"fires on {slot} image patches in rows {r0}-{r1}, cols {c0}-{c1}"


class OfflineScorer:
    name = "offline-match"

    def __init__(self, slot_names: tuple[str, ...]):
        self.slot_names = slot_names

    def predict(self, explanation: str, examples: list[Shown]) -> list[bool]:
        box = _BOX.search(explanation)
        if box:
            slot = box.group(1)
            img = self.slot_names.index(slot) if slot in self.slot_names else -1
            r0, r1, c0, c1 = (int(box.group(i)) for i in range(2, 6))
            out = []
            for s in examples:
                pats = [image_token(t) for t in s.tokens]
                out.append(
                    any(p and p[0] == img and r0 <= p[1] <= r1 and c0 <= p[2] <= c1 for p in pats)
                )
            return out
        quoted = {_norm(q) for q in re.findall(r'"([^"]+)"', explanation)}
        if not quoted:
            section = _SECTION_RE.search(explanation)
            if section:
                roles = {r for r, name in _SECTION.items() if name == section.group(1)}
                return [any(r in roles for r in s.example.roles) for s in examples]
            quoted = {w for w in re.findall(r"[a-z]{4,}", explanation.lower()) if w not in _STOP}
        return [any(_norm(t) in quoted for t in s.tokens) for s in examples]
