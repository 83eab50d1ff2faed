"""TokenizerService over a `Tokenizer`: check the request, convert, one call, convert back.

Encoding, decoding and the chat template run in a worker thread so that a
large request never stalls the event loop (tiktoken releases the GIL while it
encodes)."""

import asyncio

from dbrx_serve.shared.generated.dbrx.serve.v1 import tokenizer_pb2 as pb
from dbrx_serve.shared.generated.dbrx.serve.v1 import tokenizer_pb2_grpc as pb_grpc

from . import convert
from .tokenizer import Tokenizer


class TokenizerServicer(pb_grpc.TokenizerServiceServicer):
    def __init__(self, tokenizer: Tokenizer, max_batch_size: int):
        self.tokenizer, self.max_batch_size = tokenizer, max_batch_size

    async def Encode(self, request: pb.EncodeRequest, context) -> pb.EncodeResponse:
        texts = convert.texts_from_pb(request, self.max_batch_size)
        results = await asyncio.to_thread(self.tokenizer.encode, texts, request.allow_special_tokens)
        return convert.encode_response(results)

    async def Decode(self, request: pb.DecodeRequest, context) -> pb.DecodeResponse:
        sequences = convert.sequences_from_pb(request, self.max_batch_size)
        texts = await asyncio.to_thread(self.tokenizer.decode_batch, sequences, request.skip_special_tokens)
        return convert.decode_response(texts)

    async def ApplyChatTemplate(self, request: pb.ApplyChatTemplateRequest, context) -> pb.EncodeResponse:
        messages = convert.messages_from_pb(request)
        ids = await asyncio.to_thread(self.tokenizer.apply_chat_template, messages, request.add_generation_prompt)
        return convert.encode_response([ids])

    async def GetTokenizerInfo(self, request: pb.GetTokenizerInfoRequest, context) -> pb.TokenizerInfo:
        return convert.info_to_pb(self.tokenizer)
