"""Test helpers shipped with mmae_hf: synthetic datasets (and, where present, an offline fake Hub)."""

from .fake_hub import FakeHub

__all__ = ["FakeHub"]
