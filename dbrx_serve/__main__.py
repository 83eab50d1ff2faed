import sys

from dbrx_serve.cli.main import main

sys.exit(main())
