"""The toy tokenizer: a byte-level BPE in Qwen2's style, trained on toy traces.

Why byte-level BPE and Qwen2's pre-tokenizer regex: ``AutoTokenizer.from_pretrained`` on a
directory whose ``config.json`` says ``model_type: qwen2`` rebuilds a Qwen2 tokenizer from
the saved vocabulary and merges, whatever ``tokenizer_config.json`` says (transformers 5.x).
A WordLevel tokenizer would be silently changed by that rebuild; a Qwen2-style byte-level
BPE is what the rebuild reconstructs, so it survives. The checkpoint stage still verifies the
round trip of every model's tokenizer (``tokenshift.tokenizer.check_tokenizer_roundtrip``).
Like Qwen2's, the regex splits digits one by one, so numbers are spelled digit by digit.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
# Qwen2's pre-tokenization pattern (tokenization_qwen2.PRETOKENIZE_REGEX).
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """Train the toy BPE on ``texts``; all 256 byte symbols are kept, so any text encodes."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN)
