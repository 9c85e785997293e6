"""LoRA adapters without torch: read PEFT's and mlx-lm's (``load``), write either (``write``), fuse one into
a streamed conversion (``fuse``). ``torch2mlx.convert_adapter`` (``torch2mlx/adapters``) adds module names."""
