"""poseguide: pose-guided human image generation by multi-stage ControlNet fine-tuning."""

__version__ = "0.1.0"
