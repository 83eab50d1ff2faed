"""The TokenizerService as the gateway uses it: /tokenize and /detokenize,
the text of each token (logprobs), and the model's default stop ids (which
stop_token_ids adds to). Status codes come back as typed errors."""

from typing import Sequence

import grpc

from dbrx_serve.shared import rpc
from dbrx_serve.shared.generated.dbrx.serve.v1 import tokenizer_pb2 as pb
from dbrx_serve.shared.generated.dbrx.serve.v1 import tokenizer_pb2_grpc as pb_grpc


class TokenizerClient:
    def __init__(self, channel: grpc.aio.Channel):
        self.channel, self.stub = channel, pb_grpc.TokenizerServiceStub(channel)
        self.info: pb.TokenizerInfo | None = None

    async def encode(self, text: str) -> list[int]:
        reply = await rpc.called(self.stub.Encode(pb.EncodeRequest(texts=[text])))
        return list(reply.results[0].ids)

    async def apply_chat_template(self, messages: Sequence[tuple[str, str]], add_generation_prompt: bool) -> list[int]:
        request = pb.ApplyChatTemplateRequest(messages=[pb.ChatMessage(role=r, content=c) for r, c in messages],
                                              add_generation_prompt=add_generation_prompt)
        return list((await rpc.called(self.stub.ApplyChatTemplate(request))).results[0].ids)

    async def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        request = pb.DecodeRequest(sequences=[pb.TokenIds(ids=ids)], skip_special_tokens=skip_special_tokens)
        return (await rpc.called(self.stub.Decode(request))).texts[0]

    async def token_texts(self, ids: Sequence[int]) -> list[str]:
        """Each token's own text (special tokens included), one Decode for all."""
        if not ids:
            return []
        request = pb.DecodeRequest(sequences=[pb.TokenIds(ids=[i]) for i in ids])
        return list((await rpc.called(self.stub.Decode(request))).texts)

    async def stop_ids(self) -> tuple[int, ...]:
        if self.info is None:
            self.info = await rpc.called(self.stub.GetTokenizerInfo(pb.GetTokenizerInfoRequest()))
        return tuple(self.info.stop_ids)

    async def close(self) -> None:
        await self.channel.close()
