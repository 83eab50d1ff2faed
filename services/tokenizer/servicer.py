"""TokenizerService over a `Tokenizer`: check the request, convert, one call, convert back.

The request's size is checked first against the server's bounds (convert.py);
encoding, decoding and the chat template then run in a worker thread so that a
large request never stalls the event loop (tiktoken releases the GIL while it
encodes)."""

import asyncio

from dbrx_serve.shared.generated.dbrx.serve.v1 import tokenizer_pb2 as pb
from dbrx_serve.shared.generated.dbrx.serve.v1 import tokenizer_pb2_grpc as pb_grpc

from . import convert
from .config import TokenizerServiceConfig
from .tokenizer import Tokenizer


class TokenizerServicer(pb_grpc.TokenizerServiceServicer):
    def __init__(self, tokenizer: Tokenizer, config: TokenizerServiceConfig):
        self.tokenizer, self.config = tokenizer, config

    async def Encode(self, request: pb.EncodeRequest, context) -> pb.EncodeResponse:
        texts = convert.texts_from_pb(request, self.config)
        results = await asyncio.to_thread(self.tokenizer.encode, texts, request.allow_special_tokens)
        return convert.encode_response(results)

    async def Decode(self, request: pb.DecodeRequest, context) -> pb.DecodeResponse:
        sequences = convert.sequences_from_pb(request, self.config)
        texts = await asyncio.to_thread(self.tokenizer.decode_batch, sequences, request.skip_special_tokens)
        return convert.decode_response(texts)

    async def ApplyChatTemplate(self, request: pb.ApplyChatTemplateRequest, context) -> pb.EncodeResponse:
        messages = convert.messages_from_pb(request, self.config)
        ids = await asyncio.to_thread(self.tokenizer.apply_chat_template, messages, request.add_generation_prompt)
        return convert.encode_response([ids])

    async def GetTokenizerInfo(self, request: pb.GetTokenizerInfoRequest, context) -> pb.TokenizerInfo:
        return convert.info_to_pb(self.tokenizer)
