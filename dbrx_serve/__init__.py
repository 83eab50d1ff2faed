"""dbrx-serve: TensorRT-LLM's examples/dbrx pipeline as gRPC microservices.

`dbrx_serve.shared` is the code every stage uses (model, config, checkpoint IO,
job store, gRPC plumbing); `dbrx_serve.services.<stage>` are the stages;
`dbrx_serve.client` is the SDK; `dbrx_serve.cli` is the `dbrx` command.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dbrx-serve")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"
