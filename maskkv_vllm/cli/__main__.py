"""``python -m maskkv_vllm.cli``: the ``maskkv`` command."""

import sys

from maskkv_vllm.cli import main

sys.exit(main())
