"""``python -m fixup_transformer.translate --model DIR < in.de > out.en``; see :mod:`fixup_transformer.cli.translate`."""

import sys

from .cli.translate import main

if __name__ == "__main__":
    sys.exit(main())
