"""The gRPC API's .proto files, installed with the package for clients in other languages.

`INCLUDE_PATH` is the folder to give protoc (`-I`) or @grpc/proto-loader (`includeDirs`); the files
are `dbrx/serve/v1/*.proto` under it (README.md, "Clients in other languages"):

    python -c "import dbrx_serve.protos as p; print(p.INCLUDE_PATH)"
"""

from pathlib import Path

INCLUDE_PATH = Path(__file__).resolve().parent
PROTO_FILES = sorted(INCLUDE_PATH.glob("dbrx/serve/v1/*.proto"))
