"""Hostile request bytes for any RPC, made by hypothesis from the request's protobuf descriptor:
a valid request (a `base`) with a few of its fields (or any subset) replaced, each by its type (extreme and
unknown-enum numbers, NaN and infinite floats, empty, odd and huge strings, repeated fields empty,
short or huge), nested messages likewise; and garbage: random bytes, a valid message cut short,
with a byte changed or with bytes after it (unknown fields). Starting from a valid request gets
most examples past the first check to the code behind it."""

from google.protobuf.descriptor import Descriptor, FieldDescriptor as F
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

INT_RANGES = {F.TYPE_INT32: (-2**31, 2**31 - 1), F.TYPE_SINT32: (-2**31, 2**31 - 1), F.TYPE_SFIXED32: (-2**31, 2**31 - 1),
              F.TYPE_INT64: (-2**63, 2**63 - 1), F.TYPE_SINT64: (-2**63, 2**63 - 1), F.TYPE_SFIXED64: (-2**63, 2**63 - 1),
              F.TYPE_UINT32: (0, 2**32 - 1), F.TYPE_FIXED32: (0, 2**32 - 1),
              F.TYPE_UINT64: (0, 2**64 - 1), F.TYPE_FIXED64: (0, 2**64 - 1), F.TYPE_ENUM: (-2**31, 2**31 - 1)}
EDGES = (-2**63, -2**31 - 1, -2**31, -1, 0, 1, 2, 1023, 1024, 1025, 2**15, 2**16, 2**31 - 1, 2**31, 2**32 - 1,
         2**53 + 1, 2**63 - 1, 2**64 - 1)
HUGE_COUNTS = (1025, 8193, 100_000)  # over each per-request bound the servers set, and far over
HUGE_MESSAGE_COUNTS = (1025, 8193)  # repeated messages: past the bounds, without minutes of building
HUGE_STRINGS = ("x" * 257, "é" * 4096, "\U0001f600" * 70_000, "a" * 1_000_001)  # over the servers' bounds, and far over
SHORT = 4  # most items in a list that is not huge


def weighted(*choices: tuple[int, st.SearchStrategy]) -> st.SearchStrategy:
    """One of the strategies, each drawn `weight` times in the sum of weights."""
    return st.sampled_from([strategy for weight, strategy in choices for _ in range(weight)]).flatmap(lambda s: s)


def integers(field_type: int) -> st.SearchStrategy[int]:
    low, high = INT_RANGES[field_type]
    return st.one_of(st.integers(0, 8), st.sampled_from([e for e in EDGES if low <= e <= high]),
                     st.integers(low, high))


def enums(field: F) -> st.SearchStrategy[int]:
    """Known numbers, and any int32: proto3 enums carry unknown numbers as they are."""
    return st.one_of(st.sampled_from([value.number for value in field.enum_type.values]), integers(F.TYPE_ENUM))


def strings(samples: tuple[str, ...], huge: bool) -> st.SearchStrategy[str]:
    return st.one_of(st.text(max_size=24), st.sampled_from(samples + (HUGE_STRINGS if huge else ())))


def scalars(field: F, samples: tuple[str, ...], huge: bool) -> st.SearchStrategy:
    if field.type == F.TYPE_ENUM:
        return enums(field)
    if field.type in INT_RANGES:
        return integers(field.type)
    if field.type in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
        return st.floats(width=32 if field.type == F.TYPE_FLOAT else 64)  # NaN and infinities included
    if field.type == F.TYPE_BOOL:
        return st.booleans()
    if field.type == F.TYPE_STRING:
        return strings(samples, huge)
    if field.type == F.TYPE_BYTES:
        return st.binary(max_size=64)
    raise AssertionError(f"no strategy for {field.full_name}")


def values(field: F, samples: tuple[str, ...], huge: bool = True, base=None) -> st.SearchStrategy:
    """A field's value; `huge`: strings and lists may be huge (never inside a huge list: its
    elements are small, so a request stays under the servers' 64 MiB). `base`: the base request's
    value of the field, which a nested message starts from."""
    def one(huge: bool) -> st.SearchStrategy:
        if field.type == F.TYPE_MESSAGE:
            element = base[0] if field.is_repeated and base else None if field.is_repeated else base
            return messages(field.message_type, samples, huge, element)
        return scalars(field, samples, huge)
    if not field.is_repeated:
        return one(huge)
    short = st.lists(one(huge), max_size=SHORT)
    if not huge:
        return short
    counts = HUGE_MESSAGE_COUNTS if field.type == F.TYPE_MESSAGE else HUGE_COUNTS
    return weighted((8, short), (1, st.builds(lambda value, n: [value] * n, one(False), st.sampled_from(counts))))


def messages(descriptor: Descriptor, samples: tuple[str, ...], huge: bool = True,
             base: Message | None = None) -> st.SearchStrategy[Message]:
    """`base` (or an empty message) with a few of its fields (mostly; sometimes any subset) set
    to hostile values: one bad field at a time is what reaches past the checks of the others."""
    fields = {field.name: values(field, samples, huge, _value(base, field)) for field in descriptor.fields}
    if not fields:
        return st.just(GetMessageClass(descriptor)())
    names = st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=3, unique=True)
    drawn = weighted((4, _few(names, fields)), (1, st.fixed_dictionaries({}, optional=fields)))
    return drawn.map(lambda drawn: _build(descriptor, drawn, base))


@st.composite
def _few(draw, names: st.SearchStrategy[list[str]], fields: dict[str, st.SearchStrategy]) -> dict:
    return {name: draw(fields[name]) for name in draw(names)}


def _value(base: Message | None, field: F):
    if base is None or not (field.is_repeated or field.type == F.TYPE_MESSAGE):
        return None
    return list(getattr(base, field.name)) if field.is_repeated else getattr(base, field.name)


def _build(descriptor: Descriptor, drawn: dict, base: Message | None) -> Message:
    message = GetMessageClass(descriptor)()
    if base is not None:
        message.CopyFrom(base)
    for name, value in drawn.items():
        field = descriptor.fields_by_name[name]
        if field.is_repeated:
            del getattr(message, name)[:]
            getattr(message, name).extend(value)
        elif field.type == F.TYPE_MESSAGE:
            getattr(message, name).CopyFrom(value)
        else:
            setattr(message, name, value)  # a later member of a oneof replaces an earlier one
    return message


def garbage(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Bytes that are no such message, or barely one."""
    cut = st.tuples(valid, st.integers(0, 64)).map(lambda v: v[0][:len(v[0]) * v[1] // 64])
    flipped = st.tuples(valid, st.integers(0, 2**16), st.integers(1, 255)).map(_flip)
    trailing = st.tuples(valid, st.binary(min_size=1, max_size=32)).map(lambda v: v[0] + v[1])
    return st.one_of(st.binary(max_size=96), cut, flipped, trailing)


def _flip(drawn: tuple[bytes, int, int]) -> bytes:
    data, at, mask = drawn
    if not data:
        return bytes([mask])
    at %= len(data)
    return data[:at] + bytes([data[at] ^ mask]) + data[at + 1:]


def request_bytes(descriptor: Descriptor, samples: tuple[str, ...] = (),
                  base: Message | None = None) -> st.SearchStrategy[bytes]:
    """What a hostile client sends for a request of this type: mostly `base` (a valid request)
    with fields changed, some garbage. `samples`: strings to try besides SAMPLE_STRINGS."""
    samples = (*SAMPLE_STRINGS, *samples)
    valid = messages(descriptor, samples, base=base).map(lambda message: message.SerializeToString())
    return weighted((7, valid), (3, garbage(valid)))


SAMPLE_STRINGS = (  # near what the servers look for, so that fuzzing gets past the first checks
    "", " ", "\0", "\n", "é", "\U0001f600", "x" * 256, "0b9d5c4e-8f6a-4c1e-9d2b-7a3f5e6c8d10",  # no such job
    "0B9D5C4E-8F6A-4C1E-9D2B-7A3F5E6C8D10", "not-a-uuid",
    "/", "/tmp", "/tmp/dbrx-fuzz/model", "/tmp/dbrx-fuzz/out", "relative/dir", "/a/../b", "/a/./b/", "~/x",
    "/" + "n" * 300, "/" + "d/" * 2100, "/proc/self/root", "float32", "bfloat16", "int8", "int4", "auto", "enable",
    "disable", "paged", "user", "assistant", "system", "tool", "<|im_start|>", "<|im_end|>", "<|endoftext|>",
    "Hello world", "What is AGI?")
