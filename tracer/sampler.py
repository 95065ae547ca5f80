"""The lean sampler `footprint record` execs into after attaching (see Recorder.handoff).

Imports nothing heavy: no bcc, no LLVM, no pandas, no click.
"""

import sys

from .recorder import sample_main as main

if __name__ == "__main__":
    sys.exit(main())
