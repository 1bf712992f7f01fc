"""Shared test settings."""

import os

import pytest
import torch
from hypothesis import settings

# Mutation runs (tools/mutation.sh) run the fast tests once per mutant: fewer, fixed examples.
# Property tests cap their own max_examples with ``settings.default.max_examples``.
settings.register_profile("mutation", max_examples=8, deadline=None, derandomize=True, database=None)
if os.environ.get("HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])
os.environ["SNIPER_CACHE"] = "off"  # no annotation cache in the home folder; cache tests set their own


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One intra-op thread for the whole suite: the tests use tiny tensors, and on a shared
    2-core CI box a second spinning OpenMP thread only makes them wait. ``SNIPER_THREADS=1`` keeps
    it so when a test calls the CLI's ``main`` in this process (it applies its thread choice),
    and gives the same to the commands tests start as subprocesses."""
    n = torch.get_num_threads()
    before = os.environ.get("SNIPER_THREADS")
    os.environ["SNIPER_THREADS"] = "1"
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
    if before is None:
        os.environ.pop("SNIPER_THREADS", None)
    else:
        os.environ["SNIPER_THREADS"] = before
