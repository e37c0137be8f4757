"""A fixture for test modules whose tensors are tiny: run them on one thread.

On a loaded 2-core machine, two OpenMP threads per process spin-wait on each other; a
4k-token forward of the small test model takes 10 ms on one thread and up to seconds on two.
Use with ``from single_thread import one_thread`` and ``pytestmark = pytest.mark.usefixtures("one_thread")``.
"""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
