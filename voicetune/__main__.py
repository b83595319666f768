"""`python -m voicetune ...`: see voicetune/cli.py for the verbs."""

import sys

from voicetune.cli import main

sys.exit(main())
