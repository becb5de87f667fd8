"""mmae-hf: MMAE (Mean Masked Autoencoder with Flow-Mixing) for encrypted-traffic classification.

Importing the package registers the MMAE classes with the transformers Auto* factories.
"""

__version__ = "0.1.0"
