"""DBRX's id layout (docs/tokenizer.md section 1): cl100k_base's BPE ranks plus
eight special tokens at fixed ids, in a model vocabulary padded to 100352.

Kept apart from tiktoken so that the layout can be read, tested and masked
without loading a BPE file."""

from dbrx_serve.shared.errors import InvalidInput

CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
CL100K_NUM_RANKS = 100_256
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
CL100K_FILE_NAME = "cl100k_base.tiktoken"

ENDOFTEXT, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = "<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>"
ENDOFPROMPT, PAD, IM_START, IM_END = "<|endofprompt|>", "<|pad|>", "<|im_start|>", "<|im_end|>"

SPECIAL_TOKENS: dict[str, int] = {
    ENDOFTEXT: 100257,
    FIM_PREFIX: 100258,
    FIM_MIDDLE: 100259,
    FIM_SUFFIX: 100260,
    ENDOFPROMPT: 100276,
    PAD: 100277,
    IM_START: 100278,
    IM_END: 100279,
}
SPECIAL_TEXT_OF_ID: dict[int, str] = {i: text for text, i in SPECIAL_TOKENS.items()}

EOS_ID = BOS_ID = SPECIAL_TOKENS[ENDOFTEXT]  # bos is declared, never inserted
PAD_ID = SPECIAL_TOKENS[PAD]
NUM_ID_SLOTS = max(SPECIAL_TOKENS.values()) + 1  # 100280: GetTokenizerInfo's vocab_size
DEFAULT_MODEL_VOCAB_SIZE = 100_352  # rows of wte and lm_head in config.json
MAX_NUM_RANKS = min(SPECIAL_TOKENS.values()) - 1  # ranks must stay below 100256
DEFAULT_STOP_IDS = (EOS_ID,)


def unassigned_mask(num_ranks: int, model_vocab_size: int) -> list[bool]:
    """True at each id below model_vocab_size that no token owns: a sampler sets
    those logits to -inf so that it never emits an id that cannot be decoded."""
    mask = [True] * model_vocab_size
    mask[:num_ranks] = [False] * min(num_ranks, model_vocab_size)
    for i in SPECIAL_TOKENS.values():
        if i < model_vocab_size:
            mask[i] = False
    return mask


def check_special_entry(token_id: int, text: str, where: str) -> None:
    """A checkpoint's own special-token list must agree with DBRX's table."""
    if SPECIAL_TEXT_OF_ID.get(token_id) != text:
        expected = SPECIAL_TEXT_OF_ID.get(token_id, "no special token")
        raise InvalidInput(f"{where}: id {token_id} is {text!r} there, but DBRX's table has {expected!r} "
                           f"at that id ({', '.join(f'{t}={i}' for t, i in SPECIAL_TOKENS.items())})")
