"""SAE features against what is known about the studies (labels from reports or MeSH terms)."""
