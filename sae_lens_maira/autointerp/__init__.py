"""Automated interpretability: explain features from their top examples and score the explanations
by detection, through any OpenAI-compatible chat endpoint or a deterministic offline backend."""
