"""vidiff: video diffusion (VideoCrafter, DynamiCrafter, ...) in clean, checkpoint-exact PyTorch."""

__version__ = "0.1.0"
