"""The gradio layer: one module per tab, each calling the core. Nothing outside voicetune.ui imports gradio."""
