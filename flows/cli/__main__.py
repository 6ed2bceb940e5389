"""``python -m memrestore.flows.cli``: the command line, as the ``memrestore`` script runs it."""

from memrestore.flows.cli import main

if __name__ == "__main__":  # not on an import (the error tree's test imports every module)
    main()
