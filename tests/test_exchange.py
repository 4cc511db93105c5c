"""The tagged exchange's arithmetic (kernels/jit.py: step_tag, tag_words, word_values, word_tags, wait_words), run
in Triton's interpreter: the packing keeps every bit of every value, the tags never repeat in a slot, and a wait
for a tag that never comes gives up after its spin limit with the error flag set.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import requires_interpreter
from tritonlstm.kernels.jit import publish_words, step_tag, tag_words, wait_words, word_tags, word_values

pytestmark = requires_interpreter

# the word that carries each float type, as a torch and a Triton dtype
WORDS = {torch.float16: (torch.int32, tl.int32), torch.bfloat16: (torch.int32, tl.int32),
         torch.float32: (torch.int64, tl.int64)}  # fmt: skip
TAG_BITS = {torch.int32: 16, torch.int64: 32}


@triton.jit
def _pack_kernel(x_ptr, w_ptr, y_ptr, tag_ptr, n, N: tl.constexpr, WORD: tl.constexpr):
    o = tl.arange(0, N)
    words = tag_words(tl.load(x_ptr + o), step_tag(n, WORD), WORD)
    tl.store(w_ptr + o, words)
    tl.store(y_ptr + o, word_values(words, x_ptr.dtype.element_ty))
    tl.store(tag_ptr + o, word_tags(words))


def _pack(x: torch.Tensor, n: int):
    word, tl_word = WORDS[x.dtype]
    words, y, tags = torch.empty(x.numel(), dtype=word), torch.empty_like(x), torch.empty(x.numel(), dtype=word)
    _pack_kernel[(1,)](x, words, y, tags, n, N=x.numel(), WORD=tl_word)
    return words, y, tags


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(torch.int16 if x.element_size() == 2 else torch.int32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_every_16_bit_value_survives_the_word(dtype):
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)  # every pattern: NaNs, -0, inf
    for n in (0, 2**16 - 2, 2**16 - 1):  # tags 1, 0xFFFF and the wrap to 0
        words, y, tags = _pack(x, n)
        assert torch.equal(_bits(y), _bits(x))
        assert (tags == (n + 1) % 2**16).all()
        assert torch.equal(words & 0xFFFF, _bits(x).to(torch.int32) & 0xFFFF), "the value's bits in the low half"


def test_32_bit_values_survive_the_word():
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-45, -3.4e38, 1.0])
    x = torch.cat([special, torch.randn(3064) * 1e3, torch.randint(-(2**31), 2**31 - 1, (1024,)).to(torch.int32)
                   .view(torch.float32)])  # fmt: skip
    for n in (0, 7, 2**32 - 1):
        words, y, tags = _pack(x, n)
        assert torch.equal(_bits(y), _bits(x))
        assert (tags == (n + 1) % 2**32).all()


@triton.jit
def _tags_kernel(n_ptr, out_ptr, N: tl.constexpr, WORD: tl.constexpr):
    for i in range(N):
        tl.store(out_ptr + i, step_tag(tl.load(n_ptr + i), WORD))


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=2, max_value=2**40), st.sampled_from([torch.int32, torch.int64]))
def test_a_slot_never_holds_the_awaited_tag_early(n, word):
    """Step n waits in slot (n - 1) % 2 for tag(n - 1); that slot held tag(n - 3) before, and in steps 0 and 1 the
    zeros the launcher wrote: the tag of a step differs from the tag two steps before and from 0 in steps 0, 1."""
    steps = torch.tensor([0, 1, n - 2, n - 1, n], dtype=torch.int64)
    tags = torch.empty(5, dtype=word)
    _tags_kernel[(1,)](steps, tags, N=5, WORD=tl.int32 if word == torch.int32 else tl.int64)
    assert tags.tolist() == [(int(s) + 1) % 2 ** TAG_BITS[word] for s in steps]
    assert tags[0] != 0 and tags[1] != 0
    assert tags[4] != tags[2], "a slot's tag two steps apart"


@triton.jit
def _wait_kernel(w_ptr, x_ptr, out_ptr, flag_ptr, n, failed_in, spin_limit, PUBLISH: tl.constexpr,
                 WORD: tl.constexpr):  # fmt: skip
    o = tl.arange(0, 16)[:, None] * 16 + tl.arange(0, 16)[None, :]
    mask = o < 250  # the tail is outside the tile: never waited for
    if PUBLISH:
        publish_words(w_ptr + o, tl.load(x_ptr + o), step_tag(n, WORD), mask, WORD)
    words, failed = wait_words(w_ptr + o, mask, step_tag(n, WORD), failed_in, spin_limit)
    tl.store(out_ptr + o, word_values(words, x_ptr.dtype.element_ty), mask=mask)
    tl.store(flag_ptr, failed)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_wait_returns_published_values_and_gives_up_on_a_stale_tag(dtype):
    word, tl_word = WORDS[dtype]
    x = torch.randn(256).to(dtype)
    words, out, flag = torch.zeros(256, dtype=word), torch.zeros(256, dtype=dtype), torch.zeros(1, dtype=torch.int32)
    _wait_kernel[(1,)](words, x, out, flag, 5, 0, 3, PUBLISH=True, WORD=tl_word)
    assert int(flag) == 0 and torch.equal(out[:250], x[:250])
    # step 7's tag never comes to words that hold step 5's: three more polls, then the flag, and no hang
    _wait_kernel[(1,)](words, x, out, flag, 7, 0, 3, PUBLISH=False, WORD=tl_word)
    assert int(flag) == 1
    # a program that already failed waits no more and stays failed
    _wait_kernel[(1,)](words, x, out, flag, 5, 1, 1 << 30, PUBLISH=False, WORD=tl_word)
    assert int(flag) == 1
