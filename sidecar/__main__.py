"""`python -m sidecar` and the `sidecar` console script.

grpc core writes lines of its own to stderr (not JSON, a peer's text unescaped,
and only read from the environment when grpc is first imported), so the
command silences it before anything imports grpc; GRPC_VERBOSITY set by the
user still wins.
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "NONE")

from sidecar.cli import main  # after the environment is set

if __name__ == "__main__":
    main()
