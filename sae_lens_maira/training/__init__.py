"""SAE training with SAELens runners on MAIRA-2."""
