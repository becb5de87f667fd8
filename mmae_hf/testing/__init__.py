"""Test helpers shipped with mmae_hf: synthetic datasets (and, where present, an offline fake Hub)."""
