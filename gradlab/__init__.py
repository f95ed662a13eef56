"""gradlab: see vanishing and exploding gradients in recurrent networks, and compare the remedies."""

__version__ = "0.1.0"
