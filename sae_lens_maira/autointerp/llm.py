"""Explainer and detection scorer that ask a chat model (prompts follow delphi's)."""

from __future__ import annotations

import json
import re

from sae_lens_maira.autointerp.client import ChatClient
from sae_lens_maira.autointerp.examples import Shown

EXPLAINER_SYSTEM = """You are a meticulous AI researcher investigating features of a sparse autoencoder \
trained on a radiology multimodal language model (MAIRA-2) that writes chest X-ray reports.
Each example below is a window of the model's prompt: report sections (indication, technique, comparison, \
prior report, findings) and image patches. A run of image patches is written \
[<image slot> image r<row>c<col>-r<row>c<col>: ...] with the patches where the feature fires listed as \
<<r<row>c<col>>> (rows grow downwards, columns to the right, on the square crop the model sees). \
Text tokens where the feature fires are marked <<like this>>.
Find what the marked positions have in common: words, clinical findings, devices, report sections, \
image regions, or changes over time. Be concise: one sentence.
End your answer with a last line of the form
[EXPLANATION]: <your explanation>"""

DETECTION_SYSTEM = """You are an AI researcher evaluating an explanation of a sparse autoencoder \
feature of a radiology multimodal language model. You are given the explanation and numbered examples \
(windows of prompts; image patch runs are written [<slot> image r<row>c<col>-r<row>c<col>]). \
For each example decide whether the feature fires anywhere in it, judging only from the explanation.
Answer with a JSON list of 0s and 1s, one per example in order, and nothing else, e.g. [1, 0, 0, 1]."""


def explainer_messages(examples: list[Shown]) -> list[dict[str, str]]:
    body = "\n".join(f"Example {i + 1}: {s.text}" for i, s in enumerate(examples))
    return [{"role": "system", "content": EXPLAINER_SYSTEM}, {"role": "user", "content": body}]


def detection_messages(explanation: str, examples: list[Shown]) -> list[dict[str, str]]:
    body = f"Explanation: {explanation}\n\n" + "\n".join(
        f"Example {i + 1}: {s.text}" for i, s in enumerate(examples)
    )
    return [{"role": "system", "content": DETECTION_SYSTEM}, {"role": "user", "content": body}]


def parse_explanation(text: str) -> str:
    """The text after the last ``[EXPLANATION]:``, else the last non-empty line; at most 512 chars."""
    hits = re.findall(r"\[EXPLANATION\]:\s*(.+)", text)
    out = (
        hits[-1]
        if hits
        else next((ln for ln in reversed(text.strip().splitlines()) if ln.strip()), "")
    )
    out = out.strip()
    if len(out) >= 2 and out[0] == out[-1] == '"' and out.count('"') == 2:
        out = out[1:-1]  # a fully quoted answer
    return out[:512] or "(no explanation)"


def parse_predictions(text: str, n: int) -> list[bool] | None:
    """The JSON list of n 0/1 answers in ``text``; None when there is none of the right length."""
    for match in reversed(re.findall(r"\[[^\[\]]*\]", text)):
        try:
            vals = json.loads(match)
        except json.JSONDecodeError:
            continue
        if (
            isinstance(vals, list)
            and len(vals) == n
            and all(v in (0, 1, True, False) for v in vals)
        ):
            return [bool(v) for v in vals]
    return None


class LLMExplainer:
    def __init__(self, client: ChatClient, temperature: float = 0.0, max_tokens: int = 400):
        self.client, self.params = client, {"temperature": temperature, "max_tokens": max_tokens}
        self.name = client.model

    def explain(self, examples: list[Shown], baseline: list[Shown]) -> str:
        return parse_explanation(self.client.complete(explainer_messages(examples), **self.params))


class LLMScorer:
    def __init__(self, client: ChatClient, temperature: float = 0.0, max_tokens: int = 200):
        self.client, self.params = client, {"temperature": temperature, "max_tokens": max_tokens}
        self.name = client.model
        self.n_unparsed = 0

    def predict(self, explanation: str, examples: list[Shown]) -> list[bool]:
        """One call per prompt batch; an unparseable answer is retried once, then counts as all 0."""
        msgs = detection_messages(explanation, examples)
        pred = parse_predictions(self.client.complete(msgs, **self.params), len(examples))
        if pred is None:
            retry = msgs + [
                {
                    "role": "user",
                    "content": f"Answer only with a JSON list of {len(examples)} 0/1 values.",
                }
            ]
            pred = parse_predictions(self.client.complete(retry, **self.params), len(examples))
        if pred is None:
            self.n_unparsed += len(examples)
            return [False] * len(examples)
        return pred
