"""Protobuf <-> library values for TokenizerService, in one place.

Request checks that are about the wire (the bounds on a request's size) live
here too, so the servicer stays a straight line. They only count, so they run
first, on the event loop; what takes longer runs in a thread."""

from dbrx_serve.shared.errors import InvalidInput
from dbrx_serve.shared.generated.dbrx.serve.v1 import tokenizer_pb2 as pb

from .chat import ChatMessage
from .config import TokenizerServiceConfig
from .tokenizer import Tokenizer


def check_batch(count: int, max_batch_size: int, what: str) -> None:
    if count == 0:
        raise InvalidInput(f"the batch is empty: send at least one {what}")
    if count > max_batch_size:
        raise InvalidInput(f"the batch has {count} {what}s, over this server's max_batch_size {max_batch_size}: "
                           "split it into smaller requests")


def check_length(length: int, max_text_length: int, what: str) -> None:
    if length > max_text_length:
        raise InvalidInput(f"{what} has {length} characters, over this server's max_text_length {max_text_length}: "
                           "split it")


def texts_from_pb(request: pb.EncodeRequest, config: TokenizerServiceConfig) -> list[str]:
    check_batch(len(request.texts), config.max_batch_size, "text")
    for index, text in enumerate(request.texts):
        check_length(len(text), config.max_text_length, f"text {index}")
    return list(request.texts)


def sequences_from_pb(request: pb.DecodeRequest, config: TokenizerServiceConfig) -> list[list[int]]:
    check_batch(len(request.sequences), config.max_batch_size, "sequence")
    return [list(sequence.ids) for sequence in request.sequences]


def messages_from_pb(request: pb.ApplyChatTemplateRequest, config: TokenizerServiceConfig) -> list[ChatMessage]:
    if len(request.messages) > config.max_chat_messages:
        raise InvalidInput(f"the chat has {len(request.messages)} messages, over this server's max_chat_messages "
                           f"{config.max_chat_messages}: shorten it")
    for index, message in enumerate(request.messages):
        check_length(len(message.role) + len(message.content), config.max_text_length, f"chat message {index}")
    return [ChatMessage(m.role, m.content) for m in request.messages]


def encode_response(results: list[list[int]]) -> pb.EncodeResponse:
    """`add` is the cheapest way to fill a repeated message field (about 40% faster than constructors)."""
    response = pb.EncodeResponse()
    for ids in results:
        response.results.add(ids=ids)
    return response


def decode_response(texts: list[str]) -> pb.DecodeResponse:
    return pb.DecodeResponse(texts=texts)


def info_to_pb(tokenizer: Tokenizer) -> pb.TokenizerInfo:
    specials = [pb.SpecialToken(text=text, id=i) for text, i in tokenizer.special_tokens.items()]
    return pb.TokenizerInfo(vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id, bos_id=tokenizer.bos_id,
                            pad_id=tokenizer.pad_id, special_tokens=specials, source=tokenizer.source,
                            model_vocab_size=tokenizer.model_vocab_size, stop_ids=tokenizer.stop_ids)
