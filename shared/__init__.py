"""Code every service shares.

Imported before numpy by every entry point (`cartridge`, `python -m services.<name>`, via
their packages): numpy's OpenBLAS would start one busy-waiting thread per core, and on a
machine whose cores self-play and training already fill, the services' small matrix work
(the evaluator's and the web page's rating fits) ran 10x slower with them than on one.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
