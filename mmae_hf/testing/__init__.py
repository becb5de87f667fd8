"""Helpers for tests, examples and smoke runs: synthetic flow datasets with the exact data contract
(`mmae_hf.testing.synthetic`). The offline stand-in Hub used by the test suite lives in `tests/fake_hub.py`."""
