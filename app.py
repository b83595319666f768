"""Entry point for `python app.py` and Hugging Face Spaces."""

from voicetune.ui.app import main

if __name__ == "__main__":
    main()
