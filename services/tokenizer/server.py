"""The tokenizer server: `build_server(config)` apart from `serve_tokenizer(args)`.

    dbrx serve tokenizer --tokenizer_dir DIR --port N"""

import argparse
import asyncio
import sys

import grpc

from dbrx_serve.shared import logs, rpc
from dbrx_serve.shared.errors import DbrxServeError
from dbrx_serve.shared.generated.dbrx.serve.v1 import tokenizer_pb2_grpc as pb_grpc

from .chat import AUTO
from .config import TokenizerServiceConfig
from .servicer import TokenizerServicer
from .tokenizer import load_tokenizer

SERVICE_NAME = "dbrx.serve.v1.TokenizerService"
DEFAULT_PORT = 50051


def build_server(config: TokenizerServiceConfig) -> tuple[grpc.aio.Server, int]:
    """Load the tokenizer, register the service (with health and reflection), bind the port."""
    tokenizer = load_tokenizer(config.tokenizer_dir, config.system_prompt, config.num_threads)
    servicer = TokenizerServicer(tokenizer, config)
    return rpc.build_server([rpc.Servicer(pb_grpc.add_TokenizerServiceServicer_to_server, servicer, SERVICE_NAME)],
                            config.server)


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    """The flags of `dbrx serve tokenizer`."""
    parser.add_argument("--tokenizer_dir", required=True, help="directory with a *.tiktoken file or tokenizer.json")
    parser.add_argument("--max_batch_size", type=int, default=TokenizerServiceConfig.max_batch_size,
                        help="most texts or sequences per request")
    parser.add_argument("--max_text_length", type=int, default=TokenizerServiceConfig.max_text_length,
                        help="most characters in one text or chat message (role and content)")
    parser.add_argument("--max_chat_messages", type=int, default=TokenizerServiceConfig.max_chat_messages,
                        help="most messages in one chat")
    parser.add_argument("--system_prompt", default=AUTO,
                        help="chat template default system prompt: auto (from tokenizer_config.json), none, or a text")
    parser.add_argument("--num_threads", type=int, default=0, help="encoding threads (0: one per CPU)")
    rpc.add_server_flags(parser, DEFAULT_PORT)


def config_from_args(args: argparse.Namespace) -> TokenizerServiceConfig:
    return TokenizerServiceConfig(tokenizer_dir=args.tokenizer_dir, max_batch_size=args.max_batch_size,
                                  max_text_length=args.max_text_length, max_chat_messages=args.max_chat_messages,
                                  system_prompt=args.system_prompt, num_threads=args.num_threads,
                                  server=rpc.server_config(args))


async def serve_config(config: TokenizerServiceConfig) -> None:
    server, port = build_server(config)
    await rpc.serve(server, port, config.server)


def serve_tokenizer(args: argparse.Namespace) -> int:
    """Entry of `dbrx serve tokenizer`: runs until SIGINT/SIGTERM; 2 on a bad setting."""
    try:
        config = config_from_args(args)
        asyncio.run(serve_config(config))
    except DbrxServeError as error:
        print(f"dbrx serve tokenizer: {error}", file=sys.stderr, flush=True)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m dbrx_serve.services.tokenizer.server ...`, the same as `dbrx serve tokenizer`."""
    logs.at_least_info()
    parser = argparse.ArgumentParser(description="DBRX tokenizer gRPC server")
    add_serve_args(parser)
    return serve_tokenizer(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
