"""Entry script for ``nnp train`` that Lightning can re-launch for DDP ranks.

Lightning's subprocess launcher restarts ``sys.argv[0]`` with Hydra's saved
config (``-cp RUN/.hydra -cn config.yaml``) for ranks > 0; ``nnp train``
points ``sys.argv[0]`` here so the child runs the same command. It lives in
its own folder so that running it as a script puts nothing else on sys.path.
"""

import sys

from nnp.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
