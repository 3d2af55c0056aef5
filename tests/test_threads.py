"""cgar_src.threads.torch_threads: the thread count of one block, restored on exit (also on error); bad n refused."""
import pytest
import torch

from cgar_src.analysis.gate_fit import single_thread
from cgar_src.threads import torch_threads


@pytest.fixture
def three_threads():
    """Start every test from a count that differs from 1 and 2, and leave the process as it was found."""
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    yield
    torch.set_num_threads(before)


def test_sets_and_restores(three_threads):
    with torch_threads(1):
        assert torch.get_num_threads() == 1
        with torch_threads(2):                       # nested blocks restore their own predecessor
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 3


def test_restores_after_an_error(three_threads):
    with pytest.raises(KeyError), torch_threads(1):
        assert torch.get_num_threads() == 1
        raise KeyError("boom")
    assert torch.get_num_threads() == 3


@pytest.mark.parametrize("n", [0, -1, 1.0, True, "2", None])
def test_bad_n_is_refused_before_anything_changes(three_threads, n):
    ran = []
    with pytest.raises(ValueError, match=r"^n must be an integer >= 1"), torch_threads(n):
        ran.append(torch.get_num_threads())
    assert not ran and torch.get_num_threads() == 3   # the block never ran, the count never changed


def test_single_thread_is_torch_threads_one(three_threads):
    with single_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 3
