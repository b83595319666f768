"""voicetune: tune a small language model to a brand voice, then hear the difference.

The package is a library plus a command line (`python -m voicetune --help`); `voicetune.ui` is the
only place that knows about gradio.
"""

__version__ = "0.1.0"
