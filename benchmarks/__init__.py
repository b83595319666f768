"""`make bench`: voicetune measured against a hand-written TRL + PEFT setup (see benchmarks/run.py)."""
