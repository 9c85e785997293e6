"""Writers: sharded MLX safetensors, the index and the manifest."""
