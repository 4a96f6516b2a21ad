"""sit_nlp: Structural Instruction Tuning inside Hugging Face encoder-decoders.

It imports the shared latent module from :mod:`sit_causal.latent`; there is no second copy.
"""

__version__ = "0.1.0"
