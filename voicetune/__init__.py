"""voicetune: tune a small language model to a brand voice, then hear the difference.

The package is a library plus a command line (`python -m voicetune --help`); `voicetune.ui` is the
only place that knows about gradio.
"""

import logging


class _QuietOptionalKernel(logging.Filter):
    """Drop bitsandbytes' warning that its optional `kernels` package is missing.

    On a CPU with AVX512-BF16/AMX, bitsandbytes tries to fetch a faster 4-bit kernel from the Hub through the
    `kernels` package on every import (peft and trl import it) and warns when it cannot; it then uses its own
    CPU kernel, which is what voicetune wants anyway (no downloads at run time). The warning reached every
    CLI call, the app log and the training log, so only that one message is dropped; other bitsandbytes
    warnings still show.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward from kernels-community")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_QuietOptionalKernel())

__version__ = "0.1.0"
